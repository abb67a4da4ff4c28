"""BitFit, VPT (shallow/deep) and the Houlsby adapter on a plain ViT."""
import numpy as np
import paddle
import pytest
from paddle.static import InputSpec

from ppadapt.methods.trainable import set_trainable, trainable_parameters
from ppadapt.methods.bitfit import BitFitConfig, apply_bitfit, is_bitfit_parameter
from ppadapt.methods.houlsby import HoulsbyConfig, apply_houlsby, is_houlsby_parameter
from ppadapt.methods.vpt import VPTConfig, apply_vpt, is_vpt_parameter
from ppadapt.models import VisionTransformer, ViTConfig
from tiny import RandomImages, tiny_vit

PATCHES = 16  # tiny ViT: 32x32 images, 8x8 patches
METHODS = {
    "bitfit": (apply_bitfit, BitFitConfig, is_bitfit_parameter),
    "vpt": (apply_vpt, VPTConfig, is_vpt_parameter),
    "houlsby": (apply_houlsby, HoulsbyConfig, is_houlsby_parameter),
}
CASES = [("bitfit", {}), ("vpt", dict(tokens=4)), ("vpt", dict(tokens=3, deep=True)),
         ("houlsby", dict(bottleneck=8))]
IDS = ["bitfit", "vpt-shallow", "vpt-deep", "houlsby"]


def _adapted(method, seed=0, **options):
    apply, config, _ = METHODS[method]
    paddle.seed(seed)
    model = tiny_vit()
    apply(model, config(**options))
    return model


def _token_counts(model):
    counts = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda layer, inputs: counts.append(inputs[0].shape[1]))
    return counts


@pytest.mark.parametrize("method,options", CASES, ids=IDS)
def test_backbone_keys_unchanged(method, options):
    paddle.seed(0)
    plain = tiny_vit()
    adapted = _adapted(method, **options)
    plain_sd, adapted_sd = plain.state_dict(), adapted.state_dict()
    assert set(plain_sd) <= set(adapted_sd)
    assert all(list(plain_sd[k].shape) == list(adapted_sd[k].shape) for k in plain_sd)
    extra = set(adapted_sd) - set(plain_sd)
    predicate = METHODS[method][2]
    assert all(predicate(k) for k in extra)
    assert bool(extra) == (method != "bitfit")
    assert not any(predicate(k) for k in plain_sd if method != "bitfit")
    # A backbone checkpoint loads into the adapted model with nothing missing.
    adapted.set_state_dict(plain_sd)
    for k in plain_sd:
        np.testing.assert_array_equal(adapted.state_dict()[k].numpy(), plain_sd[k].numpy())


def test_bitfit_predicate():
    assert is_bitfit_parameter("patch_embed.proj.bias")
    assert is_bitfit_parameter("blocks.3.norm1.bias") and is_bitfit_parameter("norm.bias")
    assert is_bitfit_parameter("blocks.0.attn.qkv.bias")
    assert not is_bitfit_parameter("blocks.0.attn.qkv.weight") and not is_bitfit_parameter("cls_token")
    assert not is_bitfit_parameter("head.bias")  # the caller adds head.*
    assert apply_bitfit(tiny_vit()) == []


@pytest.mark.parametrize("deep", [False, True], ids=["shallow", "deep"])
def test_vpt_shapes_and_token_count(deep):
    model = _adapted("vpt", tokens=5, deep=deep)
    name = "vpt_prompts.deep" if deep else "vpt_prompts.shallow"
    assert list(model.state_dict()[name].shape) == [2 if deep else 1, 5, 32]
    counts = _token_counts(model)
    model.eval()
    assert model(paddle.randn([3, 3, 32, 32])).shape == [3, 10]
    # Every block sees cls + prompts + patches: deep replaces, never accumulates.
    assert counts == [1 + 5 + PATCHES] * 2


def test_vpt_deep_replaces_prompts_before_every_block():
    model = _adapted("vpt", tokens=3, deep=True)
    seen = []
    for block in model.blocks:  # registered after VPT's hooks: sees the spliced input
        block.register_forward_pre_hook(lambda layer, inputs: seen.append(inputs[0].numpy()))
    model.eval()
    model(paddle.randn([2, 3, 32, 32]))
    deep = model.vpt_prompts.deep.numpy()
    for i, x in enumerate(seen):
        np.testing.assert_array_equal(x[:, 1:4], np.broadcast_to(deep[i], (2, 3, 32)))
    assert not np.allclose(seen[1][:, 0], seen[0][:, 0])  # the class token did go through block 0


def test_vpt_shallow_zero_prompts_keep_cls_and_patches_in_place():
    paddle.seed(1)
    plain = tiny_vit()
    model = tiny_vit()
    model.set_state_dict(plain.state_dict())
    apply_vpt(model, VPTConfig(tokens=4))
    model.vpt_prompts.shallow.set_value(np.zeros([1, 4, 32], "float32"))
    ref, got = [], []
    plain.blocks[0].register_forward_pre_hook(lambda layer, inputs: ref.append(inputs[0].numpy()))
    model.blocks[0].register_forward_pre_hook(lambda layer, inputs: got.append(inputs[0].numpy()))
    plain.eval(), model.eval()
    x = paddle.randn([2, 3, 32, 32])
    plain(x), model(x)
    ref, got = ref[0], got[0]
    assert got.shape == (2, 1 + 4 + PATCHES, 32)
    np.testing.assert_array_equal(got[:, :1], ref[:, :1])  # class token (+ its pos embed) at index 0
    np.testing.assert_array_equal(got[:, 1:5], 0)  # prompts: no position embedding added
    np.testing.assert_array_equal(got[:, 5:], ref[:, 1:])  # patches, in order, after the prompts


def test_vpt_init_bounds():
    model = _adapted("vpt", tokens=50)
    bound = np.sqrt(6 / (3 * 8 * 8 + 32))  # authors' "random": patch_dim = 3 * 8 * 8
    w = model.vpt_prompts.shallow.numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    x = _adapted("vpt", tokens=50, init="xavier").vpt_prompts.shallow.numpy()
    xb = np.sqrt(6 / (50 + 32))
    assert np.abs(x).max() <= xb and np.abs(x).max() > 0.9 * xb


def test_vpt_dropout_only_in_training():
    model = _adapted("vpt", tokens=4, dropout=0.5)
    x = paddle.randn([2, 3, 32, 32])
    model.eval()
    np.testing.assert_array_equal(model(x).numpy(), model(x).numpy())
    model.train()
    assert not np.array_equal(model(x).numpy(), model(x).numpy())


def test_houlsby_is_a_no_op_at_init_and_wraps_the_mlp():
    paddle.seed(2)
    model = tiny_vit()
    model.eval()
    x = paddle.randn([2, 3, 32, 32])
    before = model(x).numpy()
    adapters = apply_houlsby(model, HoulsbyConfig(bottleneck=8))
    assert len(adapters) == 2 and adapters[0] is model.blocks[0].adapter
    assert list(model.state_dict()["blocks.1.adapter.down.weight"].shape) == [32, 8]
    np.testing.assert_array_equal(model(x).numpy(), before)
    # With a non-zero up projection the MLP output is replaced by mlp + up(gelu(down(mlp))).
    block = model.blocks[0]
    paddle.nn.initializer.Normal(std=0.5)(block.adapter.up.weight)
    h = paddle.randn([2, 17, 32])
    mlp = block.mlp.fc2(block.mlp.act(block.mlp.fc1(h)))
    expected = mlp + block.adapter.up(paddle.nn.functional.gelu(block.adapter.down(mlp)))
    np.testing.assert_allclose(block.mlp(h).numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(block.mlp(h).numpy(), mlp.numpy(), atol=1e-4)


def test_houlsby_inits():
    near = _adapted("houlsby", bottleneck=8, init="houlsby").blocks[0].adapter
    assert np.any(near.up.weight.numpy()) and np.abs(near.up.weight.numpy()).max() <= 2e-3
    zeros = _adapted("houlsby", bottleneck=8, init="zeros").blocks[0].adapter
    assert not np.any(zeros.down.weight.numpy()) and not np.any(zeros.up.weight.numpy())


@pytest.mark.parametrize("method,options", CASES, ids=IDS)
def test_fit_moves_only_method_parameters(method, options):
    predicate = METHODS[method][2]
    net = _adapted(method, **options)
    set_trainable(net, lambda n: predicate(n) or n.startswith("head."))
    before = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    model = paddle.Model(net, inputs=[InputSpec([None, 3, 32, 32], "float32", "image")],
                         labels=[InputSpec([None, 1], "int64", "label")])
    model.prepare(paddle.optimizer.Momentum(learning_rate=0.1, momentum=0.9,
                                            parameters=trainable_parameters(net)),
                  paddle.nn.CrossEntropyLoss())
    model.fit(RandomImages(24), batch_size=8, epochs=1, verbose=0, shuffle=False)
    after = {k: v.numpy() for k, v in net.state_dict().items()}
    own = [k for k in before if predicate(k)]
    assert own
    for k in before:
        if predicate(k) or k.startswith("head."):
            assert not np.array_equal(before[k], after[k]), f"{k} did not move"
        else:
            np.testing.assert_array_equal(before[k], after[k], err_msg=f"frozen {k} changed")


def test_exact_counts_on_vit_b16():
    cfg = ViTConfig(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
                    qkv_bias=True, epsilon=1e-6)

    def count(method, **options):
        apply, config, predicate = METHODS[method]
        with paddle.LazyGuard():  # shapes only: no 86M-parameter initialisation
            model = VisionTransformer(cfg, class_num=100)
            apply(model, config(**options))
        return sum(int(np.prod(p.shape)) for n, p in model.named_parameters() if predicate(n))

    assert count("bitfit") == 102_912
    assert count("vpt", tokens=100) == 76_800
    assert count("vpt", tokens=10, deep=True) == 92_160 == 12 * 10 * 768
    assert count("houlsby") == 12 * (768 * 64 + 64 + 64 * 768 + 768)


@pytest.mark.parametrize("method,options", [
    ("vpt", dict(tokens=0)), ("vpt", dict(tokens=2.5)), ("vpt", dict(init="normal")),
    ("vpt", dict(dropout=1.0)), ("vpt", dict(deep="yes")),
    ("houlsby", dict(bottleneck=0)), ("houlsby", dict(activation="tanh")),
    ("houlsby", dict(init="lora")), ("houlsby", dict(init_scale=0.0)),
])
def test_bad_options(method, options):
    apply, config, _ = METHODS[method]
    with pytest.raises(ValueError):
        apply(tiny_vit(), config(**options))


@pytest.mark.parametrize("method,options", CASES, ids=IDS)
def test_applying_twice_is_an_error(method, options):
    model = _adapted(method, **options)
    apply, config, _ = METHODS[method]
    with pytest.raises(ValueError, match="already applied"):
        apply(model, config(**options))


def test_houlsby_all_zero_init_only_ever_trains_up_bias():
    """V-PETL Bench's all-zero init: act(0) = 0 blocks every gradient but up.bias's."""
    net = _adapted("houlsby", bottleneck=8, init="zeros")
    set_trainable(net, is_houlsby_parameter)
    opt = paddle.optimizer.Momentum(learning_rate=0.1, momentum=0.9, parameters=trainable_parameters(net))
    x, y = paddle.randn([4, 3, 32, 32]), paddle.to_tensor([[1], [2], [3], [4]], dtype="int64")
    for _ in range(3):
        paddle.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        opt.clear_grad()
    adapter = net.blocks[0].adapter
    assert np.any(adapter.up.bias.numpy())
    for p in (adapter.up.weight, adapter.down.weight, adapter.down.bias):
        assert not np.any(p.numpy())
