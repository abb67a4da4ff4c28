"""AdaptFormer branch: semantics of every option, and the tutorial's parameter count."""
import numpy as np
import paddle
import pytest

from ppadapt.methods.trainable import count_parameters
from ppadapt.methods import Adapter, AdaptFormerConfig, apply_adaptformer, is_adapter_parameter
from ppadapt.models import VisionTransformer, ViTConfig

TINY = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def _model(**adapter):
    paddle.seed(3)
    model = VisionTransformer(TINY, class_num=10)
    apply_adaptformer(model, AdaptFormerConfig(**adapter))
    return model


def test_official_defaults():
    cfg = AdaptFormerConfig().resolved()
    assert (cfg.bottleneck, cfg.scale, cfg.learnable_scale, cfg.layernorm, cfg.dropout, cfg.input, cfg.init) == \
        (64, 0.1, False, "none", 0.1, "stream", "lora")
    adapter = Adapter(32, bottleneck=8)
    assert not np.any(adapter.up_proj.weight.numpy()) and not np.any(adapter.up_proj.bias.numpy())
    assert not np.any(adapter.down_proj.bias.numpy())
    bound = 1 / np.sqrt(32)  # Kaiming-uniform with a=sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    w = adapter.down_proj.weight.numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound


def test_branch_width_follows_the_model_not_768():
    model = _model(bottleneck=8)
    names = {k: v.shape for k, v in model.state_dict().items() if is_adapter_parameter(k)}
    assert names["blocks.0.adaptmlp.down_proj.weight"] == [32, 8]
    assert names["blocks.1.adaptmlp.up_proj.weight"] == [8, 32]



@pytest.mark.parametrize("source", ["stream", "norm2"])
def test_branch_input_and_sum(source):
    paddle.seed(4)
    block_model = VisionTransformer(TINY, class_num=10)
    apply_adaptformer(block_model, AdaptFormerConfig(input=source, init="trunc_normal", dropout=0.0))
    block_model.eval()
    block = block_model.blocks[0]
    x = paddle.randn([2, 17, 32])
    out = block(x).numpy()

    h = x + block.attn(block.norm1(x))
    normed = block.norm2(h)
    # Plain MLP: call the sublayers directly so the hook does not fire.
    mlp = block.mlp.fc2(block.mlp.act(block.mlp.fc1(normed)))
    branch = block.adaptmlp(h if source == "stream" else normed)
    expected = (h + mlp + branch).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(branch.numpy()).max() > 1e-4  # the branch really contributes


def test_scale_fixed_or_learnable():
    fixed = _model(bottleneck=4)
    assert not any("scale" in k for k in fixed.state_dict())
    learn = _model(bottleneck=4, learnable_scale=True, scale=0.5)
    scales = [v for k, v in learn.state_dict().items() if k.endswith("adaptmlp.scale")]
    assert len(scales) == 2 and all(float(s) == 0.5 for s in scales)


@pytest.mark.parametrize("where", ["in", "out"])
def test_layernorm_option(where):
    model = _model(bottleneck=4, layernorm=where)
    assert "blocks.0.adaptmlp.adapter_layer_norm.weight" in model.state_dict()
    adapter = model.blocks[0].adaptmlp
    paddle.nn.initializer.Normal(std=0.5)(adapter.up_proj.weight)
    x = paddle.randn([2, 5, 32]) * 3 + 1
    y = adapter(x).numpy()
    if where == "out":  # normalised output: zero mean per token
        np.testing.assert_allclose(y.mean(-1), 0, atol=1e-5)


def test_dropout_respects_eval():
    model = _model(bottleneck=16, dropout=0.5)
    adapter = model.blocks[0].adaptmlp
    paddle.nn.initializer.Normal(std=0.5)(adapter.up_proj.weight)
    x = paddle.randn([4, 5, 32])
    adapter.eval()
    np.testing.assert_array_equal(adapter(x).numpy(), adapter(x).numpy())
    adapter.train()
    assert not np.array_equal(adapter(x).numpy(), adapter(x).numpy())


def test_applying_twice_is_an_error():
    model = _model(bottleneck=4)
    with pytest.raises(ValueError, match="already applied"):
        apply_adaptformer(model, AdaptFormerConfig(bottleneck=4))


def test_bad_options():
    for bad in (dict(layernorm="both"), dict(input="x"), dict(variant="x"), dict(bottleneck=0), dict(dropout=1.0)):
        with pytest.raises(ValueError):
            AdaptFormerConfig(**bad).resolved()


def test_tutorial_vit_b_has_86_316_400_parameters_as_paddle_summary_printed():
    """The tutorial's ViT-B/3 on 32x32, 100 classes, no qkv bias, tutorial branch.

    paddle.summary counts only sublayer parameters, so it leaves out pos_embed
    (101 x 768) and cls_token (768); our count includes them.
    """
    paddle.seed(0)
    model = VisionTransformer(ViTConfig(img_size=32, patch_size=3, embed_dim=768, depth=12, num_heads=12,
                                        qkv_bias=False), class_num=100)
    apply_adaptformer(model, AdaptFormerConfig(variant="tutorial"))
    model.eval()
    summary = paddle.summary(model, (1, 3, 32, 32))
    assert summary["total_params"] == 86_316_400
    assert count_parameters(model).total == 86_316_400 + 101 * 768 + 768
    # After transfer to CIFAR-10 with the backbone frozen: branches (incl. scales) + head.
    model.reset_head(10)
    from ppadapt.methods.trainable import set_trainable
    set_trainable(model, lambda n: is_adapter_parameter(n) or n.startswith("head."))
    assert str(count_parameters(model)) == "trainable parameters: 1,197,334 of 86,325,526 (1.39%), 4.57 MiB; 1,189,644 without the head"
