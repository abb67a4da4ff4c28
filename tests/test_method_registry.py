"""The method registry: every method by name, its options, and V-PETL's parameter counts."""
import paddle
import pytest

from ppadapt.methods.trainable import set_trainable
from ppadapt.methods import METHODS, get_method, list_methods
from ppadapt.models import VisionTransformer, ViTConfig

from tiny import tiny_vit

VIT_B16 = ViTConfig(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, qkv_bias=True, epsilon=1e-6)


def _own_count(name, config=VIT_B16, **options):
    """Trainable parameters excluding the head (V-PETL's "Params" column)."""
    with paddle.LazyGuard():  # shapes only: a ViT-B/16 without allocating its weights
        model = VisionTransformer(config, class_num=100)
        method = get_method(name)
        method.apply_to(model, **options)
    return sum(int(p.size) for n, p in model.named_parameters() if method.owns(n) and not n.startswith("head."))


@pytest.mark.parametrize("name,options,expected", [
    ("bitfit", {}, 102_912),
    ("lora", {"rank": 8}, 294_912),
    ("adaptformer", {"bottleneck": 8}, 156_768),
    ("vpt-shallow", {"tokens": 100}, 76_800),
    ("linear", {}, 0),
])
def test_vit_b16_counts_match_v_petl(name, options, expected):
    assert _own_count(name, **options) == expected


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_applies_and_marks_only_its_own_parameters(name):
    model = tiny_vit()
    plain = set(model.state_dict())
    method = get_method(name)
    method.apply_to(model)
    set_trainable(model, method.is_trainable)
    assert plain <= set(model.state_dict())
    trainable = {n for n, p in model.named_parameters() if not p.stop_gradient}
    assert {"head.weight", "head.bias"} <= trainable
    if name == "full":
        assert trainable == set(model.state_dict())
    elif name == "linear":
        assert trainable == {"head.weight", "head.bias"}
    else:
        assert all(method.owns(n) or n.startswith("head.") for n in trainable)
        assert len(trainable) > 2
    out = model(paddle.randn([2, 3, 32, 32]))
    assert out.shape == [2, 10]


def test_options_are_checked_and_listed():
    assert get_method("vpt-deep").make_config(tokens=3).deep is True
    with pytest.raises(ValueError, match="method 'lora' has no option 'rnk'"):
        get_method("lora").make_config(rnk=4)
    with pytest.raises(ValueError, match="did you mean 'lora'"):
        get_method("lorra")
    text = list_methods()
    assert len(text.splitlines()) == len(METHODS)
    assert "rank=8" in text and "bottleneck=64" in text
