"""The plain ViT: PaddleClas parameter names, shapes and numerics."""
import numpy as np
import paddle
import pytest
from paddleclas.ppcls.arch.backbone.model_zoo.vision_transformer import VisionTransformer as ClasViT

from ppadapt.methods import AdaptFormerConfig, apply_adaptformer
from ppadapt.models import VisionTransformer, ViTConfig

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


@pytest.mark.parametrize("qkv_bias,epsilon", [(True, 1e-6), (False, 1e-5)])
def test_paddleclas_state_dict_loads_with_identical_logits(tmp_path, qkv_bias, epsilon):
    paddle.seed(0)
    clas = ClasViT(class_num=10, qkv_bias=qkv_bias, epsilon=epsilon, **TINY)
    path = tmp_path / "clas.pdparams"
    paddle.save(clas.state_dict(), str(path))

    ours = VisionTransformer(ViTConfig(qkv_bias=qkv_bias, epsilon=epsilon, **TINY), class_num=10)
    state = paddle.load(str(path))
    assert sorted(state) == sorted(ours.state_dict())
    for name, value in ours.state_dict().items():
        assert list(value.shape) == list(state[name].shape), name
    missing, unexpected = ours.set_state_dict(state)
    assert not missing and not unexpected

    clas.eval(), ours.eval()
    x = paddle.randn([3, 3, 32, 32])
    diff = (clas(x) - ours(x)).abs().max().item()
    assert diff < 1e-5


def test_adaptformer_keeps_backbone_names_and_starts_as_noop():
    paddle.seed(1)
    plain = VisionTransformer(ViTConfig(**TINY), class_num=10)
    adapted = VisionTransformer(ViTConfig(**TINY), class_num=10)
    apply_adaptformer(adapted, AdaptFormerConfig())
    missing, unexpected = adapted.set_state_dict(plain.state_dict())
    assert not unexpected
    assert missing and all(".adaptmlp." in k for k in missing)
    assert set(plain.state_dict()) < set(adapted.state_dict())
    plain.eval(), adapted.eval()
    x = paddle.randn([2, 3, 32, 32])
    np.testing.assert_array_equal(plain(x).numpy(), adapted(x).numpy())


def test_patch_grid_drops_border_like_paddleclas():
    model = VisionTransformer(ViTConfig(img_size=32, patch_size=3, embed_dim=24, depth=1, num_heads=2), class_num=4)
    assert model.pos_embed.shape == [1, 101, 24]
    assert model(paddle.randn([2, 3, 32, 32])).shape == [2, 4]


def test_drop_path_and_dropout_only_in_training():
    paddle.seed(2)
    model = VisionTransformer(ViTConfig(drop_rate=0.3, attn_drop_rate=0.3, drop_path_rate=0.5, **TINY), class_num=5)
    x = paddle.randn([4, 3, 32, 32])
    model.eval()
    np.testing.assert_array_equal(model(x).numpy(), model(x).numpy())
    model.train()
    assert not np.array_equal(model(x).numpy(), model(x).numpy())


def test_reset_head_and_headless():
    model = VisionTransformer(ViTConfig(**TINY), class_num=10)
    model.reset_head(3)
    assert model(paddle.randn([1, 3, 32, 32])).shape == [1, 3]
    headless = VisionTransformer(ViTConfig(**TINY), class_num=0)
    assert headless(paddle.randn([1, 3, 32, 32])).shape == [1, 32]
