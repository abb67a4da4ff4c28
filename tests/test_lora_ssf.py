"""LoRA and SSF: backbone names kept, exact no-op at init, training moves only their
own parameters, exact merge back into a plain ViT, ViT-B/16 counts, bad options."""
import numpy as np
import paddle
import pytest
from paddle.static import InputSpec

from ppadapt.methods.trainable import count_parameters, set_trainable, trainable_parameters
from ppadapt.methods.lora import LoRAConfig, apply_lora, is_lora_parameter, merge_lora
from ppadapt.methods.ssf import SSFConfig, apply_ssf, is_ssf_parameter, merge_ssf
from ppadapt.models import VisionTransformer, ViTConfig
from tiny import RandomImages, tiny_vit

REGEX = r"attn\.proj|mlp\.fc\d"
# (name, apply(model), predicate, merge)
METHODS = {
    "lora_qv": (lambda m: apply_lora(m), is_lora_parameter, merge_lora),
    "lora_regex": (lambda m: apply_lora(m, LoRAConfig(rank=4, alpha=8, targets=REGEX)), is_lora_parameter, merge_lora),
    "ssf": (lambda m: apply_ssf(m), is_ssf_parameter, merge_ssf),
    "ssf_nobias": (lambda m: apply_ssf(m), is_ssf_parameter, merge_ssf),
}


def _plain(seed=0, **overrides):
    paddle.seed(seed)
    return tiny_vit(**overrides)


def _images(n=4, seed=1):
    return paddle.to_tensor(np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype("float32"))


def _fit(net, predicate, steps=4, lr=0.05):
    set_trainable(net, lambda n: predicate(n) or n.startswith("head."))
    model = paddle.Model(net, inputs=[InputSpec([None, 3, 32, 32], "float32", "image")],
                         labels=[InputSpec([None, 1], "int64", "label")])
    model.prepare(paddle.optimizer.Momentum(learning_rate=lr, momentum=0.9,
                                            parameters=trainable_parameters(net)),
                  paddle.nn.CrossEntropyLoss())
    model.fit(RandomImages(8 * steps, seed=2), batch_size=8, epochs=1, verbose=0, shuffle=False)


@pytest.mark.parametrize("method", ["lora_qv", "lora_regex", "ssf"])
def test_keys_kept_and_exact_noop_at_init(method):
    apply, predicate, _ = METHODS[method]
    x = _images()
    plain = _plain().eval()
    expected = plain(x).numpy()
    net = _plain()
    if method == "ssf":
        apply_ssf(net, SSFConfig(init_std=0.0))  # the authors' N(1, .02) init is not a no-op
    else:
        apply(net)
    plain_keys, keys = set(plain.state_dict()), set(net.state_dict())
    assert plain_keys < keys
    assert all(predicate(k) for k in keys - plain_keys)
    assert not any(predicate(k) for k in plain_keys)
    np.testing.assert_array_equal(net.eval()(x).numpy(), expected)
    # A backbone checkpoint loads into the adapted model unchanged.
    net.set_state_dict(plain.state_dict())


def test_lora_layout_and_init():
    net = _plain()
    mods = apply_lora(net)
    shapes = {k: v.shape for k, v in net.state_dict().items() if is_lora_parameter(k)}
    assert set(shapes) == {f"blocks.{i}.attn.qkv_lora.lora_{m}_{p}" for i in range(2) for m in "AB" for p in "qv"}
    assert shapes["blocks.0.attn.qkv_lora.lora_A_q"] == [32, 8]
    assert shapes["blocks.0.attn.qkv_lora.lora_B_v"] == [8, 32]
    a = mods[0].lora_A_q.numpy()
    bound = 1 / np.sqrt(32)  # Kaiming-uniform(a=sqrt(5)) bound 1/sqrt(fan_in)
    assert 0.8 * bound < np.abs(a).max() <= bound
    assert not np.any(mods[0].lora_B_q.numpy())
    # k untouched: only the q and v thirds of the qkv output change.
    for p in mods[0].parameters():
        p.set_value(paddle.randn(p.shape))
    h = paddle.randn([2, 5, 32])
    qkv = net.blocks[0].attn.qkv
    base = paddle.matmul(h, qkv.weight).numpy() + (0 if qkv.bias is None else qkv.bias.numpy())
    diff = np.abs(qkv(h).numpy() - base).max(axis=(0, 1))
    assert diff[:32].min() > 0 and diff[64:].min() > 0
    np.testing.assert_allclose(diff[32:64], 0, atol=1e-6)


def test_ssf_layout_and_init():
    net = _plain()
    mods = apply_ssf(net)
    keys = {k for k in net.state_dict() if is_ssf_parameter(k)}
    per_block = {"norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"}
    expected = {f"blocks.{i}.{n}_ssf.{p}" for i in range(2) for n in per_block for p in ("scale", "shift")}
    expected |= {"patch_embed.proj_ssf.scale", "patch_embed.proj_ssf.shift", "norm_ssf.scale", "norm_ssf.shift"}
    assert keys == expected
    assert net.state_dict()["blocks.0.attn.qkv_ssf.scale"].shape == [96]
    scales = np.concatenate([m.scale.numpy() for m in mods])
    assert abs(scales.mean() - 1) < 0.01 and 0.01 < scales.std() < 0.03  # N(1, 0.02)
    assert len(apply_ssf(_plain(), SSFConfig(include_embed_and_final_norm=False))) == 12


@pytest.mark.parametrize("method", list(METHODS))
def test_fit_moves_only_own_parameters_then_merges_exactly(method):
    apply, predicate, merge = METHODS[method]
    overrides = {"qkv_bias": method != "ssf_nobias"}
    net = _plain(**overrides)
    mods = apply(net)
    if method.startswith("lora"):
        # With B = 0 the gradient of A is second order (B is ~1e-5 after a few
        # steps on this tiny random model) and A_q can stay bit-identical in
        # float32; start B off zero so every tensor provably gets a gradient.
        for mod in mods:
            for name, p in mod.named_parameters():
                if "lora_B" in name:
                    p.set_value(paddle.randn(p.shape) * 0.05)
    before = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    _fit(net, predicate)
    after = {k: v.numpy() for k, v in net.state_dict().items()}
    for k in before:
        if predicate(k) or k.startswith("head."):
            assert not np.array_equal(before[k], after[k]), f"{k} did not move"
        else:
            assert np.array_equal(before[k], after[k]), f"frozen {k} changed"

    x = _images()
    net.eval()
    logits = net(x).numpy()
    merge(net)
    np.testing.assert_allclose(net(x).numpy(), logits, atol=1e-5, rtol=0)
    # The merged model is a plain ViT: same keys (with qkv biases for a bias-less SSF
    # model, whose merge creates them), loading into a fresh plain model gives the same logits.
    plain = _plain(seed=9, qkv_bias=True).eval()
    assert set(net.state_dict()) == set(plain.state_dict())
    assert not any(predicate(k) for k in net.state_dict())
    plain.set_state_dict(net.state_dict())
    np.testing.assert_allclose(plain(x).numpy(), logits, atol=1e-5, rtol=0)
    assert net.config.qkv_bias is True
    # Merged: can be applied again.
    apply(net)


def test_ssf_nobias_merge_creates_frozen_bias():
    net = _plain(qkv_bias=False)
    apply_ssf(net)
    set_trainable(net, is_ssf_parameter)
    merge_ssf(net)
    bias = net.blocks[0].attn.qkv.bias
    assert bias is not None and bias.shape == [96] and bias.stop_gradient
    assert net.config.qkv_bias


def test_vit_b16_counts():
    paddle.seed(0)
    net = VisionTransformer(ViTConfig(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
                                      qkv_bias=True, epsilon=1e-6), class_num=1000)
    apply_lora(net, LoRAConfig(rank=8, targets="qv"))
    apply_ssf(net)
    set_trainable(net, is_lora_parameter)
    assert count_parameters(net).trainable == 294_912
    set_trainable(net, is_ssf_parameter)
    # per block: qkv 2*2304 + proj, fc2, norm1, norm2 4*2*768 + fc1 2*3072; + patch embed and norm
    assert count_parameters(net).trainable == 12 * (2 * 2304 + 4 * 2 * 768 + 2 * 3072) + 2 * 2 * 768 == 205_824


@pytest.mark.parametrize("options", [dict(rank=0), dict(rank=-2), dict(dropout=1.0),
                                     dict(targets=r"nothing\.here"), dict(targets=r"norm1"),
                                     dict(targets="(")])
def test_lora_bad_options(options):
    with pytest.raises(ValueError):
        apply_lora(_plain(), LoRAConfig(**options))


def test_applied_twice_or_merged_without_apply():
    net = _plain()
    apply_lora(net)
    with pytest.raises(ValueError, match="already"):
        apply_lora(net, LoRAConfig(targets=REGEX))
    apply_ssf(net)
    with pytest.raises(ValueError, match="already"):
        apply_ssf(net)
    with pytest.raises(ValueError):
        merge_lora(_plain())
    with pytest.raises(ValueError):
        merge_ssf(_plain())
    with pytest.raises(ValueError):
        apply_ssf(_plain(), SSFConfig(init_std=-1))


def test_lora_dropout_only_in_training():
    net = _plain()
    (mod,) = apply_lora(net, LoRAConfig(dropout=0.5, targets=r"blocks\.0\.mlp\.fc1"))
    for p in mod.parameters():
        p.set_value(paddle.randn(p.shape))
    x = paddle.randn([2, 5, 32])
    mod.eval()
    np.testing.assert_array_equal(mod(x).numpy(), mod(x).numpy())
    mod.train()
    assert not np.array_equal(mod(x).numpy(), mod(x).numpy())
