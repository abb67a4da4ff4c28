"""The CPU speed work must not change results.

``ppadapt.models.fast_layers`` replaces the backward of Linear and LayerNorm, and
``ppadapt.utils.runtime`` turns Paddle's stride kernels off and tunes malloc. These
tests compare each against Paddle's own path: gradients to float tolerance, and
the loss trajectory of real ``paddle.Model`` training steps.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from ppadapt.methods.trainable import set_trainable
from ppadapt.methods import get_method
from ppadapt.models import fast_layers
from ppadapt.models.fast_layers import LayerNorm, Linear

from tiny import tiny_vit

ROOT = Path(__file__).resolve().parents[1]
# Which of (input, weight, bias) need a gradient: all, frozen layer, frozen prefix, ...
NEEDS = [(True, True, True), (True, False, False), (False, True, True), (True, True, False),
         (False, False, True)]


def _reference(kind, x, weight, bias, upstream):
    """Output and (input, weight, bias) gradients in float64 NumPy."""
    x, w, b, up = (np.asarray(a, dtype=np.float64) for a in (x, weight, bias, upstream))
    if kind == "linear":
        out = x @ w + b
        x2, up2 = x.reshape(-1, x.shape[-1]), up.reshape(-1, up.shape[-1])
        return out, [up @ w.T, x2.T @ up2, up2.sum(0)]
    mu = x.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5)
    xhat = (x - mu) * rstd
    dxhat = up * w
    dx = rstd * (dxhat - dxhat.mean(-1, keepdims=True) - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731
    return xhat * w + b, [dx, (flat(up) * flat(xhat)).sum(0), flat(up).sum(0)]


def check_layer_norm(layer_norm, needs) -> None:
    """``layer_norm(x, weight, bias, epsilon)`` against the float64 reference, with (input, scale,
    shift) needing a gradient as ``needs`` says: the values, and exactly the gradients needed."""
    rng = np.random.default_rng(0)
    x = (3 * rng.standard_normal((5, 7, 24)) + 1).astype("float32")
    w, b = rng.uniform(0.5, 1.5, 24).astype("float32"), rng.standard_normal(24).astype("float32")
    upstream = rng.standard_normal((5, 7, 24)).astype("float32")
    out_ref, grads_ref = _reference("layernorm", x, w, b, upstream)
    tensors = [paddle.to_tensor(a, stop_gradient=not need) for a, need in zip((x, w, b), needs)]
    out = layer_norm(*tensors, 1e-5)
    (out * paddle.to_tensor(upstream)).sum().backward()
    np.testing.assert_allclose(out.numpy(), out_ref, rtol=1e-5, atol=1e-5)
    for t, ref, need in zip(tensors, grads_ref, needs):
        if need:
            np.testing.assert_allclose(t.grad.numpy(), ref, rtol=1e-4, atol=1e-4)
        else:
            assert t.grad is None


@pytest.mark.parametrize("needs", NEEDS)
@pytest.mark.parametrize("kind", ["linear", "layernorm"])
def test_fast_layer_gradients_are_exact(kind, needs):
    """Every combination of frozen input/weight/bias, against a float64 reference.

    Paddle 3.3.1's own CPU ``layer_norm`` backward gets this wrong when the scale
    is frozen: it returns the input gradient of a LayerNorm with scale 1, which
    would corrupt every frozen-backbone method (needs = (True, False, False)).
    """
    paddle.seed(0)
    rng = np.random.default_rng(0)
    layer = Linear(24, 40) if kind == "linear" else LayerNorm(24)
    if kind == "layernorm":
        layer.weight.set_value(rng.uniform(0.5, 1.5, 24).astype("float32"))
        layer.bias.set_value(rng.standard_normal(24).astype("float32"))
    x = (3 * rng.standard_normal((5, 7, 24)) + 1).astype("float32")
    upstream = rng.standard_normal((5, 7, layer.weight.shape[-1])).astype("float32")
    out_ref, grads_ref = _reference(kind, x, layer.weight.numpy(), layer.bias.numpy(), upstream)

    xt = paddle.to_tensor(x, stop_gradient=not needs[0])
    layer.weight.stop_gradient, layer.bias.stop_gradient = not needs[1], not needs[2]
    out = layer(xt)
    (out * paddle.to_tensor(upstream)).sum().backward()
    np.testing.assert_allclose(out.numpy(), out_ref, rtol=1e-5, atol=1e-5)
    for grad, ref, need in zip([xt.grad, layer.weight.grad, layer.bias.grad], grads_ref, needs):
        if need:
            np.testing.assert_allclose(grad.numpy(), ref, rtol=1e-4, atol=1e-4)
        else:
            assert grad is None


def test_fast_path_is_not_used_without_gradients(monkeypatch):
    """Inference and no_grad go through Paddle's own ops (and so does export)."""
    calls = []
    monkeypatch.setattr(fast_layers._LinearFunction, "apply", lambda *a: calls.append(a))
    layer = Linear(4, 3)
    with paddle.no_grad():
        layer(paddle.ones([2, 4]))
    layer.weight.stop_gradient = layer.bias.stop_gradient = True
    layer(paddle.ones([2, 4]))
    assert calls == []


@pytest.mark.parametrize("weight_trains", [True, False])
def test_a_frozen_linear_keeps_no_copy_of_its_input_for_the_backward(weight_trains):
    """The input is needed only for the weight's gradient: behind a frozen weight (every frozen
    backbone) the backward keeps the weight alone, and the input gradient is still exact."""
    layer = Linear(6, 5)
    layer.weight.stop_gradient = not weight_trains
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((7, 6)).astype("float32"), stop_gradient=False)
    kept = []

    def pack(t):
        kept.append(tuple(t.shape))
        return t

    with paddle.autograd.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x)
    out.sum().backward()
    assert ((7, 6) in kept) == weight_trains and (6, 5) in kept
    np.testing.assert_allclose(x.grad.numpy(), np.tile(layer.weight.numpy().sum(axis=1), (7, 1)), rtol=1e-5)


def _train_losses(method: str, steps: int = 4) -> list[float]:
    paddle.seed(0)
    model = tiny_vit(qkv_bias=True)
    spec = get_method(method)
    spec.apply_to(model)
    set_trainable(model, spec.is_trainable)
    net = paddle.Model(model)
    params = [p for p in model.parameters() if not p.stop_gradient]
    net.prepare(paddle.optimizer.Momentum(0.1, 0.9, parameters=params), paddle.nn.CrossEntropyLoss())
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(steps):
        x = rng.standard_normal((8, 3, 32, 32)).astype("float32")
        y = rng.integers(0, 10, (8, 1)).astype("int64")
        losses.append(float(net.train_batch([x], [y])[0]))
    return losses


def test_full_training_follows_paddles_trajectory(monkeypatch):
    fast = _train_losses("full")
    monkeypatch.setattr(fast_layers, "_wants_fast_path", lambda *tensors: False)
    plain = _train_losses("full")
    assert fast[-1] != fast[0]  # it trained
    np.testing.assert_allclose(fast, plain, rtol=1e-5)


@pytest.mark.parametrize("method", ["adaptformer", "adapter"])
def test_adapter_branches_fast_linear_follows_paddles_trajectory(monkeypatch, method):
    """The adapters' projections are ppadapt Linears too; only the Linear is switched here
    (Paddle's LayerNorm gradient is wrong under the frozen backbone)."""
    fast = _train_losses(method)
    monkeypatch.setattr(fast_layers, "linear", F.linear)
    plain = _train_losses(method)
    assert fast[-1] != fast[0]
    np.testing.assert_allclose(fast, plain, rtol=1e-5)


def _trainable_grads(model, x, y) -> dict[str, np.ndarray]:
    trainable = {n for n, p in model.named_parameters() if not p.stop_gradient}
    model.clear_gradients()
    paddle.nn.functional.cross_entropy(model(paddle.to_tensor(x)), paddle.to_tensor(y)).backward()
    return {n: p.grad.numpy() for n, p in model.named_parameters() if n in trainable}


@pytest.mark.parametrize("method", ["adaptformer", "bitfit", "lora", "vpt-deep", "ssf"])
def test_freezing_does_not_change_the_trainable_gradients(monkeypatch, method):
    """A method's gradients with the backbone frozen equal those of the same model
    with everything trainable, computed by Paddle's own kernels."""
    paddle.seed(0)
    model = tiny_vit(qkv_bias=True)
    rng = np.random.default_rng(1)
    for layer in model.sublayers():  # LayerNorm scales away from 1, as in any pretrained ViT
        if isinstance(layer, paddle.nn.LayerNorm):
            layer.weight.set_value(rng.uniform(0.5, 1.5, layer.weight.shape).astype("float32"))
    spec = get_method(method)
    spec.apply_to(model)
    set_trainable(model, spec.is_trainable)
    model.eval()  # no dropout, so both passes see the same function
    x = rng.standard_normal((4, 3, 32, 32)).astype("float32")
    y = rng.integers(0, 10, (4, 1)).astype("int64")
    frozen = _trainable_grads(model, x, y)
    assert frozen and len(frozen) < len(model.parameters())
    for p in model.parameters():
        p.stop_gradient = False
    monkeypatch.setattr(fast_layers, "_wants_fast_path", lambda *tensors: False)
    everything = _trainable_grads(model, x, y)
    for name, grad in frozen.items():
        np.testing.assert_allclose(grad, everything[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_runtime_tuning_does_not_change_results(tmp_path):
    """Stride kernels and malloc settings change speed only: bit-identical losses."""
    script = tmp_path / "losses.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]
        import ppadapt, paddle
        from test_fast_layers import _train_losses
        print(json.dumps([paddle.get_flags(["FLAGS_use_stride_kernel"])["FLAGS_use_stride_kernel"],
                          _train_losses("full")]))
    """))

    def run(env_extra):
        env = {k: v for k, v in os.environ.items()
               if k != "FLAGS_use_stride_kernel" and not k.startswith("MALLOC_")}
        out = subprocess.run([sys.executable, str(script)], env={**env, **env_extra},
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    tuned_stride, tuned = run({})
    plain_stride, plain = run({"FLAGS_use_stride_kernel": "1", "MALLOC_ARENA_MAX": "8"})
    assert (tuned_stride, plain_stride) == (False, True)
    assert tuned == plain
