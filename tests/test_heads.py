"""The classifier head (issue 12): ``model.head: linear | bn_linear`` and ``model.head_init``.

``bn_linear`` is AdaptFormer's head (MAE's linear probe): a BatchNorm without scale and
shift, then the Linear, trunc-normal std 0.01, bias 0. ``zero`` is BiT's zero head.
"""
import numpy as np
import paddle
import pytest

from ppadapt.config import CONFIG_DIR, load_config
from ppadapt.methods import get_method
from ppadapt.methods.build import apply_transfer_method, build_model
from ppadapt.methods.trainable import count_parameters
from ppadapt.models import VisionTransformer, ViTConfig
from ppadapt.models.vit import HEAD_BN_EPSILON, BNLinear
from ppadapt.runs.adapter_file import adapter_state
from ppadapt.runs.pretrained import load_pretrained

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)
BUFFERS = ["head.norm._mean", "head.norm._variance"]


def vit(class_num=100, seed=0, **kw):
    paddle.seed(seed)
    return VisionTransformer(ViTConfig(**{**TINY, **kw}), class_num=class_num)


def test_default_head_is_todays_linear():
    explicit, default = vit(head="linear", head_init="default"), vit()
    assert type(default.head).__name__ == "Linear" and not isinstance(default.head, BNLinear)
    mine, ref = explicit.state_dict(), default.state_dict()
    assert list(mine) == list(ref) and all(np.array_equal(mine[k].numpy(), ref[k].numpy()) for k in ref)
    assert np.array_equal(default.head.bias.numpy(), np.zeros(100, "float32"))
    assert 0.017 < float(default.head.weight.numpy().std()) < 0.023  # trunc-normal std 0.02


def test_bn_linear_names_init_and_buffers():
    model = vit(head="bn_linear")
    params = [n for n, _ in model.named_parameters() if n.startswith("head.")]
    assert params == ["head.weight", "head.bias"]  # the Linear keeps PaddleClas's names
    assert [k for k in model.state_dict() if k.startswith("head.")] == ["head.weight", "head.bias"] + BUFFERS
    assert set(model.state_dict()) - {"head.norm._mean", "head.norm._variance"} == set(vit().state_dict())
    w = model.head.weight.numpy()
    assert 0.0085 < float(w.std()) < 0.0115 and np.abs(w).max() < 0.05  # std 0.01 (64 x 100 draws)
    assert not model.head.bias.numpy().any()
    assert not model.head.norm._mean.numpy().any() and np.all(model.head.norm._variance.numpy() == 1)
    for init, low, high in (("trunc_normal_0.02", 0.017, 0.023), ("trunc_normal_0.01", 0.0085, 0.0115)):
        for kind in ("linear", "bn_linear"):
            std = float(vit(head=kind, head_init=init).head.weight.numpy().std())
            assert low < std < high, (kind, init)


@pytest.mark.parametrize("kind", ["linear", "bn_linear"])
def test_zero_head_is_bits_and_reset_head_keeps_the_kind(kind):
    model = vit(head=kind, head_init="zero")
    assert not model.head.weight.numpy().any() and not model.head.bias.numpy().any()
    model.reset_head(7)
    assert isinstance(model.head, BNLinear) == (kind == "bn_linear")
    assert model.head.weight.shape == [64, 7] and not model.head.weight.numpy().any()
    assert model(paddle.randn([2, 3, 32, 32])).shape == [2, 7]
    assert isinstance(vit(class_num=0, head=kind).head, paddle.nn.Identity)


def test_bn_linear_normalises_with_batch_statistics_in_training_and_running_ones_in_eval():
    model = vit(head="bn_linear")
    x = paddle.randn([16, 3, 32, 32])
    model.eval()
    with paddle.no_grad():
        feats = model.forward_features(x).numpy().astype("float64")
    w, b = model.head.weight.numpy().astype("float64"), model.head.bias.numpy().astype("float64")
    model.train()
    with paddle.no_grad():
        trained = model(x).numpy()
    mean, var = feats.mean(0), feats.var(0)
    np.testing.assert_allclose(trained, (feats - mean) / np.sqrt(var + HEAD_BN_EPSILON) @ w + b, atol=1e-4)
    # running statistics: momentum 0.9 (PyTorch's 0.1) from mean 0 / variance 1; Paddle's
    # BatchNorm keeps the batch's biased variance (PyTorch's the unbiased one)
    np.testing.assert_allclose(model.head.norm._mean.numpy(), 0.1 * mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.head.norm._variance.numpy(), 0.9 + 0.1 * var, rtol=1e-4)
    model.eval()
    run_mean, run_var = model.head.norm._mean.numpy(), model.head.norm._variance.numpy()
    with paddle.no_grad():
        evaluated = model(x).numpy()
        again = model(x).numpy()
    np.testing.assert_array_equal(evaluated, again)  # eval mode leaves the statistics alone
    np.testing.assert_allclose(evaluated, (feats - run_mean) / np.sqrt(run_var + HEAD_BN_EPSILON) @ w + b, atol=1e-4)


@pytest.mark.parametrize("method", ["linear", "adaptformer", "lora", "bitfit", "full"])
def test_the_head_trains_under_every_method_and_its_statistics_are_no_parameters(method):
    model = vit(head="bn_linear")
    get_method(method).apply(model)
    get_method(method).mark_trainable(model)
    assert not model.head.weight.stop_gradient and not model.head.bias.stop_gradient
    assert all(n not in dict(model.named_parameters()) for n in BUFFERS)
    count = count_parameters(model)
    assert count.head == 64 * 100 + 100  # the buffers are not counted
    state = adapter_state(model)
    assert {"head.weight", "head.bias", *BUFFERS} <= set(state)  # an adapter file keeps the statistics


def test_a_plain_checkpoint_loads_into_a_bn_linear_model(tmp_path):
    path = tmp_path / "plain.pdparams"
    paddle.save(vit(class_num=10, seed=3).state_dict(), str(path))
    model = vit(head="bn_linear")
    assert sorted(load_pretrained(model, path)) == sorted(["head.weight", "head.bias"] + BUFFERS)


def test_config_keys_and_the_built_model():
    cfg = load_config(CONFIG_DIR / "digits.yaml", ["model.head=bn_linear", "model.head_init=zero"], stage="transfer")
    assert (cfg.model.head, cfg.model.head_init) == ("bn_linear", "zero")
    model = build_model(cfg, 5)
    apply_transfer_method(model, cfg)
    assert isinstance(model.head, BNLinear) and not model.head.weight.numpy().any()
    default = load_config(CONFIG_DIR / "digits.yaml", [], stage="transfer").model
    assert (default.head, default.head_init, default.backbone) == ("linear", "default", None)
