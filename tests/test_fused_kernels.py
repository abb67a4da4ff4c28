"""``model.layers: fused``: ppadapt's C++ CPU kernels (``ppadapt/kernels``) against Paddle's ops.

The kernels are compiled on first use (a C++ compiler is part of the CPU setup; without one
the fast layers run and one line says so). Each kernel is checked against Paddle or a float64
reference within float tolerance; moving q, k and v into heads is a copy and must be exact.
A tiny ViT trained on the fused path matches the fast path, keeps its frozen tensors
bit-identical, and trains bit-identically with recomputation (its dropout masks are seeded
from Paddle's generator, so the recomputed forward draws the same ones).
"""
from __future__ import annotations

import shutil

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from ppadapt.config import load_config
from ppadapt.kernels import build, functions as fused
from ppadapt.methods import get_method
from ppadapt.methods.trainable import set_trainable
from ppadapt.models import fast_layers
from ppadapt.models.fast_layers import Dropout, LayerNorm, layer_path, use_layers
from ppadapt.training.engine import configure_training

from test_fast_layers import NEEDS, check_layer_norm
from test_recompute import _train
from tiny import tiny_vit

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="no C++ compiler: the fused kernels cannot be built here")


def _grad_of(fn, x, upstream):
    t = paddle.to_tensor(x, stop_gradient=False)
    out = fn(t)
    (out * paddle.to_tensor(upstream)).sum().backward()
    return out.numpy(), t.grad.numpy()


def test_the_kernels_build_and_load():
    module = fused.kernels()
    assert module is not None, build.failure()
    assert all(hasattr(module, op) for op in build.OPS)
    assert fast_layers.fused_kernels_problem() is None


def test_gelu_matches_paddle():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(20000) * 3, np.linspace(-12, 12, 4003)]).astype("float32").reshape(-1, 7)
    up = rng.standard_normal(x.shape).astype("float32")
    out, grad = _grad_of(fused.gelu, x, up)
    out_ref, grad_ref = _grad_of(F.gelu, x, up)
    np.testing.assert_allclose(out, out_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-5, atol=2e-6)
    assert np.all(out[x < -6] <= 0) and np.array_equal(out[x > 6], x[x > 6])  # the tails


def test_scaled_softmax_matches_paddle():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((2, 3, 17, 17)) * 6).astype("float32")
    up = rng.standard_normal(x.shape).astype("float32")
    out, grad = _grad_of(lambda t: fused.scaled_softmax(t, 0.125), x, up)
    out_ref, grad_ref = _grad_of(lambda t: F.softmax(t * 0.125, axis=-1), x, up)
    np.testing.assert_allclose(out, out_ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("needs", NEEDS)
def test_layer_norm_gradients_for_every_frozen_combination(needs):
    """Against the float64 reference; the frozen scale (Paddle's own kernel's bug) included."""
    check_layer_norm(fused.layer_norm, needs)


def test_moving_heads_is_exact():
    rng = np.random.default_rng(3)
    b, n, h, d = 2, 5, 3, 4
    qkv = rng.standard_normal((b, n, 3 * h * d)).astype("float32")
    ups = [rng.standard_normal((b, h, n, d)).astype("float32") for _ in range(3)]

    def run(split):
        t = paddle.to_tensor(qkv, stop_gradient=False)
        parts = split(t)
        sum(((p * paddle.to_tensor(u)).sum() for p, u in zip(parts, ups))).backward()
        return [p.numpy() for p in parts], t.grad.numpy()

    parts, grad = run(lambda t: fused.split_heads(t, h))
    parts_ref, grad_ref = run(lambda t: paddle.unbind(t.reshape([b, n, 3, h, d]).transpose([2, 0, 3, 1, 4]), axis=0))
    assert all(np.array_equal(p, r) for p, r in zip(parts, parts_ref)) and np.array_equal(grad, grad_ref)

    x = rng.standard_normal((b, h, n, d)).astype("float32")
    up = rng.standard_normal((b, n, h * d)).astype("float32")
    out, grad = _grad_of(fused.heads_to_tokens, x, up)
    out_ref, grad_ref = _grad_of(lambda t: t.transpose([0, 2, 1, 3]).reshape([b, n, h * d]), x, up)
    assert np.array_equal(out, out_ref) and np.array_equal(grad, grad_ref)


def test_dropout_keeps_the_right_share_reproducibly_and_its_gradient_uses_the_same_mask():
    layer = Dropout(0.3)
    layer.path = "fused"
    layer.train()
    x = paddle.ones([400, 500])
    x.stop_gradient = False
    paddle.seed(5)
    y = layer(x)
    paddle.seed(5)
    again = layer(x).numpy()
    kept = y.numpy() != 0
    assert abs(kept.mean() - 0.7) < 0.005  # 200,000 draws: the standard error is 0.001
    np.testing.assert_allclose(y.numpy()[kept], 1 / 0.7, rtol=1e-6)
    assert np.array_equal(again, y.numpy())
    assert not np.array_equal(layer(x).numpy(), again)  # a fresh seed each call
    (grad,) = paddle.grad(y, x, paddle.full_like(y, 2.0))
    assert np.array_equal(grad.numpy() != 0, kept)
    layer.eval()
    assert np.array_equal(layer(x).numpy(), x.numpy())


def _model(method: str, layers: str, dropout: float = 0.0):
    paddle.seed(0)
    model = tiny_vit(qkv_bias=True)
    rng = np.random.default_rng(1)
    for layer in model.sublayers():  # LayerNorm scales away from 1, as in a pretrained ViT
        if isinstance(layer, LayerNorm):
            layer.weight.set_value(rng.uniform(0.5, 1.5, layer.weight.shape).astype("float32"))
    spec = get_method(method)
    if method != "full":
        spec.apply_to(model, **({"dropout": dropout} if method == "adaptformer" else {}))
    set_trainable(model, spec.is_trainable)
    use_layers(model, layers)
    model.train()
    return model


def fast_and_fused_agree(build, x: paddle.Tensor, y: paddle.Tensor) -> None:
    """``build(path)`` gives a model on that layer path: on ``fused`` its logits and gradients (one
    cross-entropy backward on ``x``, ``y``) equal the ``fast`` path's within float tolerance."""
    results = {}
    for layers in ("fast", "fused"):
        model = build(layers)
        logits = model(x)
        F.cross_entropy(logits, y).backward()
        results[layers] = logits.numpy(), {n: p.grad.numpy() for n, p in model.named_parameters() if p.grad is not None}
    (out_a, grads_a), (out_b, grads_b) = results["fast"], results["fused"]
    np.testing.assert_allclose(out_b, out_a, rtol=1e-5, atol=1e-5)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        np.testing.assert_allclose(grads_b[name], grads_a[name], rtol=1e-3, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("method", ["full", "adaptformer", "lora", "bitfit", "vpt-deep", "linear"])
def test_the_fused_path_gives_the_fast_paths_outputs_and_gradients(method):
    rng = np.random.default_rng(4)
    x = paddle.to_tensor(rng.standard_normal((4, 3, 32, 32)).astype("float32"))
    y = paddle.to_tensor(rng.integers(0, 10, (4, 1)).astype("int64"))
    fast_and_fused_agree(lambda layers: _model(method, layers), x, y)


@pytest.mark.parametrize("method", ["adaptformer", "full"])
def test_fused_training_is_bit_identical_with_recomputation(method):
    """AdaptFormer's branch dropout (0.1) and drop path stay on: the fused masks come from
    Paddle's generator, whose state recompute restores."""
    before, plain, grads, trainable = _train(method, recompute=False, layers="fused")
    _, recomputed, grads_rc, _ = _train(method, recompute=True, layers="fused")
    assert set(grads) == set(grads_rc) == trainable
    assert all(np.array_equal(grads[n], grads_rc[n]) for n in grads)
    for name in plain:
        assert np.array_equal(plain[name], recomputed[name]), name
        if name not in trainable:
            assert np.array_equal(plain[name], before[name]), f"frozen {name} changed"
    assert any(not np.array_equal(plain[n], before[n]) for n in trainable)


def test_inference_and_export_of_a_fused_model():
    model = _model("adaptformer", "fused", dropout=0.1)
    model.eval()
    x = paddle.randn([2, 3, 32, 32])
    with paddle.no_grad():
        eager = model(x).numpy()
        use_layers(model, "fast")
        reference = model(x).numpy()
        use_layers(model, "fused")
    np.testing.assert_allclose(eager, reference, rtol=1e-5, atol=1e-5)
    static = paddle.jit.to_static(model, input_spec=[paddle.static.InputSpec([None, 3, 32, 32], "float32")],
                                  full_graph=True)
    np.testing.assert_allclose(static(x).numpy(), reference, rtol=1e-5, atol=1e-5)


def test_the_config_key_and_its_one_line_refusals(monkeypatch):
    cfg = load_config(None, ["model.layers=fused"])
    model = tiny_vit()
    assert configure_training(model, cfg, "transfer", log=lambda line: None) == "fused"
    assert layer_path("fused", "cpu") == "fused"
    with pytest.raises(ValueError, match="model.layers=fused runs on the CPU only"):
        layer_path("fused", "gpu:0")
    lines = []
    monkeypatch.setattr("ppadapt.training.engine.fused_kernels_problem", lambda log=None: "no C++ compiler found (install g++)")
    assert configure_training(model, cfg, "transfer", log=lines.append) == "fast"
    assert lines == ["model.layers=fused: no C++ compiler found (install g++); training on the fast layers instead"]
    assert all(m.path == "fast" for m in model.sublayers() if isinstance(m, fast_layers.Switchable))


def test_no_compiler_means_no_kernels_and_one_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    assert build.load(tmp_path) is None
    assert build.failure(tmp_path) == "no C++ compiler found (install g++)"


def test_the_residual_add_is_paddles_add_and_passes_the_gradient_through():
    rng = np.random.default_rng(5)
    a_np, b_np = (rng.standard_normal((3, 5, 8)).astype("float32") for _ in range(2))
    a, b = paddle.to_tensor(a_np, stop_gradient=False), paddle.to_tensor(b_np, stop_gradient=True)
    out = fused.add(a, b)
    assert np.array_equal(out.numpy(), (paddle.to_tensor(a_np) + paddle.to_tensor(b_np)).numpy())
    up = rng.standard_normal(a_np.shape).astype("float32")
    (out * paddle.to_tensor(up)).sum().backward()
    assert np.array_equal(a.grad.numpy(), up) and b.grad is None


def test_relu_and_dropout_in_one_pass():
    rng = np.random.default_rng(6)
    x_np = rng.standard_normal((300, 400)).astype("float32")
    x = paddle.to_tensor(x_np, stop_gradient=False)
    assert np.array_equal(fused.relu_dropout(x, 0.0).numpy(), np.maximum(x_np, 0))
    paddle.seed(9)
    y = fused.relu_dropout(x, 0.25)
    kept = y.numpy() != 0
    positive = x_np > 0
    assert not kept[~positive].any()
    assert abs(kept[positive].mean() - 0.75) < 0.01
    np.testing.assert_allclose(y.numpy()[kept], x_np[kept] / 0.75, rtol=1e-6)
    (grad,) = paddle.grad(y, x, paddle.ones_like(y))
    np.testing.assert_allclose(grad.numpy(), np.where(kept, 1 / 0.75, 0.0), rtol=1e-6)


# --- work the fused path leaves out or folds in -------------------------------------------------

@pytest.mark.parametrize("family", [{}, {"rel_pos_bias": True, "layer_scale": 0.1, "abs_pos_embed": False}])
@pytest.mark.parametrize("layers", ["fast", "native", "fused"])
def test_a_block_asked_for_its_first_tokens_gives_them_and_their_gradients(layers, family):
    """``block(x, first_tokens=n)`` is ``block(x)[:, :n]`` (keys and values from every token)."""
    paddle.seed(2)
    model = tiny_vit(qkv_bias=True, **family)
    use_layers(model, layers)
    block = model.blocks[1]
    rng = np.random.default_rng(3)
    x_np = rng.standard_normal((3, 17, 32)).astype("float32")
    results = []
    for first in (None, 2):
        x = paddle.to_tensor(x_np, stop_gradient=False)
        out = block(x)[:, :2] if first is None else block(x, first_tokens=first)
        out.sum().backward()
        grads = [x.grad.numpy()] + [p.grad.numpy() for p in block.parameters() if p.grad is not None]
        results.append((out.numpy(), grads))
        block.clear_gradients()
    (out, grads), (part, part_grads) = results
    assert part.shape == (3, 2, 32)
    np.testing.assert_allclose(part, out, rtol=1e-5, atol=1e-5)
    assert len(grads) == len(part_grads) == 1 + len(block.parameters())
    for full_grad, part_grad in zip(grads, part_grads):
        np.testing.assert_allclose(part_grad, full_grad, rtol=1e-4, atol=1e-5)


def _last_mlp_tokens(model, x) -> int:
    seen = []
    handle = model.blocks[-1].mlp.register_forward_pre_hook(lambda layer, inputs: seen.append(inputs[0].shape[1]))
    try:
        model(x)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("method,recompute", [("adaptformer", False), ("vpt-deep", False), ("vpt-deep", True)])
def test_a_fused_training_step_runs_the_last_blocks_mlp_on_the_class_token_alone(method, recompute):
    """Only ``norm(x[:, 0])`` reaches the head, so the last block's MLP (and its branch) runs on the
    class token alone; VPT's pre-hooks and recomputation keep that. Elsewhere every token runs:
    other paths, inference, the AdaptFormer probe (eval, no gradients), a mean-pooled ViT."""
    x = paddle.randn([2, 3, 32, 32])
    model = _model(method, "fused")
    model.recompute = recompute
    tokens = model.patch_embed.num_patches + 1 + (get_method(method).config().tokens if method.startswith("vpt") else 0)
    assert _last_mlp_tokens(model, x) == 1
    with paddle.no_grad():
        assert _last_mlp_tokens(model, x) == tokens
    model.eval()
    assert _last_mlp_tokens(model, x) == tokens
    assert _last_mlp_tokens(_model(method, "fast"), x) == tokens
    mean_pooled = tiny_vit(pool="mean")
    use_layers(mean_pooled, "fused")
    mean_pooled.train()
    assert _last_mlp_tokens(mean_pooled, x) == model.patch_embed.num_patches + 1


def test_flops_count_the_class_token_queries_of_the_last_block():
    from ppadapt.apps.bench import train_step_flops
    x = paddle.randn([2, 3, 32, 32])
    counts = {layers: train_step_flops(_model("adaptformer", layers), x) for layers in ("fast", "fused")}
    t, d = 17, 32  # tokens and width of the tiny ViT
    attention = {layers: [op.forward for op in c.ops if op.kind == "attention"] for layers, c in counts.items()}
    assert attention["fast"] == [4 * 2 * t * t * d] * 2
    assert attention["fused"] == [4 * 2 * t * t * d, 4 * 2 * 1 * t * d]
    assert counts["fused"].train < counts["fast"].train


def test_the_patch_convolution_adds_its_bias_in_one_pass_with_paddles_values_and_gradients():
    rng = np.random.default_rng(7)
    x_np = rng.standard_normal((3, 3, 16, 16)).astype("float32")
    up = rng.standard_normal((3, 8, 4, 4)).astype("float32")
    results = {}
    for layers in ("native", "fused"):
        paddle.seed(1)
        conv = fast_layers.Conv2D(3, 8, kernel_size=4, stride=4)
        conv.path = layers
        x = paddle.to_tensor(x_np, stop_gradient=False)
        out = conv(x)
        (out * paddle.to_tensor(up)).sum().backward()
        results[layers] = [out.numpy(), x.grad.numpy(), conv.weight.grad.numpy(), conv.bias.grad.numpy()]
    for got, want in zip(results["fused"], results["native"]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(results["fused"][3], up.sum(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)


def test_a_linear_without_gradients_keeps_its_bias_inside_the_gemm(monkeypatch):
    """A frozen prefix (or inference) on the fused path: ``addmm``, the values of ``F.linear``."""
    rng = np.random.default_rng(8)
    x = paddle.to_tensor(rng.standard_normal((2, 9, 16)).astype("float32"))
    layer = fast_layers.Linear(16, 24)
    layer.path = "fused"
    for p in layer.parameters():
        p.stop_gradient = True
    calls = []
    original = paddle.addmm
    monkeypatch.setattr(paddle, "addmm", lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
    got = layer(x)
    monkeypatch.undo()
    assert calls and got.stop_gradient
    np.testing.assert_allclose(got.numpy(), F.linear(x, layer.weight, layer.bias).numpy(), rtol=1e-5, atol=1e-6)
