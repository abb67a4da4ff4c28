"""``model.layers``: the fast CPU backward or Paddle's own Linear/LayerNorm kernels (issue 14).

Both paths are the same layer objects with the same parameters, so checkpoints are
interchangeable; ``auto`` (the default) keeps the CPU on the fast path, exactly as before.
On the native path Paddle's CPU LayerNorm gradient under a frozen scale would be wrong
(README, "A Paddle bug this works around"): the native LayerNorm works around it, so the
two paths agree in every case here.
"""
from __future__ import annotations

import numpy as np
import paddle
import pytest

from ppadapt.config import load_config
from ppadapt.errors import ConfigError
from ppadapt.methods import get_method
from ppadapt.methods.trainable import set_trainable
from ppadapt.models import fast_layers
from ppadapt.models.fast_layers import LayerNorm, Linear, Switchable, layer_path, native_layer_norm, use_layers
from ppadapt.training.engine import configure_training

from test_fast_layers import NEEDS, check_layer_norm
from tiny import tiny_vit


def test_layer_path_is_decided_by_the_device():
    assert layer_path("auto", "cpu") == "fast"
    assert layer_path("auto", "gpu:0") == "native"
    assert layer_path("auto", "xpu:0") == "native"  # fast only where it was measured to help
    assert layer_path("native", "cpu") == "native" and layer_path("fast", "gpu:0") == "fast"
    assert layer_path("auto") == ("fast" if paddle.device.get_device().startswith("cpu") else "native")
    with pytest.raises(ValueError, match="unknown layer path 'slow'"):
        layer_path("slow")


def _model(method: str, path: str, seed: int = 0):
    paddle.seed(seed)
    model = tiny_vit(qkv_bias=True)
    rng = np.random.default_rng(seed + 1)
    for layer in model.sublayers():  # LayerNorm scales away from 1, as in any pretrained ViT
        if isinstance(layer, paddle.nn.LayerNorm):
            layer.weight.set_value(rng.uniform(0.5, 1.5, layer.weight.shape).astype("float32"))
    spec = get_method(method)
    if method != "full":
        spec.apply_to(model)
    set_trainable(model, spec.is_trainable)
    use_layers(model, path)
    return model


def test_the_switch_builds_native_layers_that_use_paddles_kernels(monkeypatch):
    model = _model("adaptformer", "native")
    layers = [m for m in model.sublayers() if isinstance(m, (Linear, LayerNorm))]
    assert len(layers) == 2 * (4 + 2) + 1 + 1 + 2 * 2  # per block 4 linears, 2 norms; final norm; head; branches
    switchable = [m for m in model.sublayers() if isinstance(m, Switchable)]
    assert set(layers) < set(switchable) and all(m.path == "native" for m in switchable)
    calls = []
    monkeypatch.setattr(fast_layers._LinearFunction, "apply", lambda *a: calls.append("linear"))
    monkeypatch.setattr(fast_layers._LayerNormFunction, "apply", lambda *a: calls.append("layernorm"))
    model.train()
    model(paddle.randn([2, 3, 32, 32])).sum().backward()
    assert calls == []
    assert use_layers(model, "fast") == len(switchable) and all(m.path == "fast" for m in switchable)
    with pytest.raises(ValueError):
        use_layers(model, "auto")  # a model takes a decided path, not a choice


def test_state_dicts_are_identical_and_checkpoints_load_across_paths(tmp_path):
    from ppadapt.runs.checkpoint import load_state_dict, load_weights, save_state_dict

    fast, native = _model("lora", "fast", seed=0), _model("lora", "native", seed=3)
    a, b = fast.state_dict(), native.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)
    x = paddle.randn([2, 3, 32, 32])
    fast.eval(), native.eval()
    for source, target, name in ((fast, native, "fast.pdparams"), (native, fast, "native.safetensors")):
        save_state_dict(source.state_dict(), tmp_path / name)  # a run's checkpoint, loaded as ppadapt loads one
        load_weights(target, load_state_dict(tmp_path / name))
        assert all(np.array_equal(target.state_dict()[k].numpy(), source.state_dict()[k].numpy()) for k in a)
        np.testing.assert_allclose(source(x).numpy(), target(x).numpy(), rtol=1e-5, atol=1e-6)


def _grads(model, x, y) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    model.clear_gradients()
    logits = model(paddle.to_tensor(x))
    paddle.nn.functional.cross_entropy(logits, paddle.to_tensor(y)).backward()
    return logits.numpy(), {n: p.grad.numpy() for n, p in model.named_parameters() if not p.stop_gradient}


@pytest.mark.parametrize("method", ["full", "adaptformer", "lora", "bitfit", "vpt-deep", "linear"])
def test_native_and_fast_paths_give_the_same_outputs_and_gradients(method):
    """Frozen-backbone methods included: their gradients pass frozen LayerNorms (the bug's case)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 3, 32, 32)).astype("float32")
    y = rng.integers(0, 10, (4, 1)).astype("int64")
    results = {}
    for path in ("fast", "native"):
        model = _model(method, path)
        model.eval()  # no dropout: both see the same function
        results[path] = _grads(model, x, y)
    (out_f, g_f), (out_n, g_n) = results["fast"], results["native"]
    np.testing.assert_allclose(out_f, out_n, rtol=1e-5, atol=1e-6)
    assert g_f.keys() == g_n.keys() and g_f
    for name in g_f:
        np.testing.assert_allclose(g_f[name], g_n[name], rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("needs", NEEDS)
def test_native_layer_norm_is_exact_where_paddles_kernel_is_not(needs):
    """Against the float64 reference, for every combination of frozen input/scale/shift."""
    check_layer_norm(native_layer_norm, needs)


def test_model_layers_key_reaches_the_model():
    cfg = load_config(None, ["model.layers=native", "model.depth=2", "model.embed_dim=32", "model.num_heads=2"])
    model = tiny_vit()
    assert configure_training(model, cfg, "transfer") == "native"
    assert all(m.path == "native" for m in model.sublayers() if isinstance(m, Linear))
    cfg = load_config(None, [])
    assert cfg.model.layers == "auto"
    assert configure_training(model, cfg, "transfer") == layer_path("auto")
    with pytest.raises(ConfigError, match=r"^model.layers must be one of auto, fast, native, fused, got 'slow'"):
        load_config(None, ["model.layers=slow"])


def test_the_cpu_default_is_todays_path():
    """Defaults on the CPU: the fast layers, no recomputation, float32 through a plain paddle.Model
    (the digits demo's weights were checked byte-identical to before this switch existed)."""
    from ppadapt.training.precision import amp_spec, make_network

    if not paddle.device.get_device().startswith("cpu"):
        pytest.skip("a GPU run")
    cfg = load_config(None, [])
    model = tiny_vit()
    assert configure_training(model, cfg, "transfer") == "fast"
    assert model.recompute is False and model.amp is None
    assert all(m.path == "fast" for m in model.sublayers() if isinstance(m, Switchable))
    opt = paddle.optimizer.Momentum(0.1, parameters=model.parameters())
    net, same = make_network(model, opt, amp_spec(cfg, "transfer"), inputs=None, labels=None)
    assert type(net) is paddle.Model and same is opt and model.amp is None
