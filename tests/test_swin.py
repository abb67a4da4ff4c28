"""Swin: parity with PaddleClas's model, the registry, the methods on Swin's stages (counts,
one real training step each), export to paddle.inference, and the one-line refusals."""
import importlib

import numpy as np
import paddle
import pytest

from ppadapt.config.schema import coerce, field_types
from ppadapt.errors import CheckpointError, ConfigError
from ppadapt.methods import get_method
from ppadapt.methods.adaptformer import AdaptFormerConfig
from ppadapt.methods.lora import LoRAConfig
from ppadapt.methods.trainable import count_parameters, set_trainable
from ppadapt.models import swin_archs
from ppadapt.models.swin import SwinConfig, SwinTransformer
from ppadapt.models.paddleclas_archs import (list_backbones, paddleclas_normalization, paddleclas_vit_config,
                                             paddleclas_weights_url)
from ppadapt.models.vit import VisionTransformer
from ppadapt.runs.checkpoint import load_state_dict, load_weights
from ppadapt.runs.pretrained import load_pretrained
from ppadapt.runs.swin_weights import adapt_swin_state_dict, resample_relative_position_bias

PADDLECLAS_SWIN = "paddleclas.ppcls.arch.backbone.legendary_models.swin_transformer"
TINY = dict(img_size=32, patch_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4)
SWIN_T = "SwinTransformer_tiny_patch4_window7_224"


def paddleclas_module():
    return importlib.import_module(PADDLECLAS_SWIN)


def randomise(model: paddle.nn.Layer, seed: int = 0) -> None:
    """Weights far from their init (LayerNorms around 1), so parity compares real arithmetic."""
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        noise = rng.standard_normal(p.shape).astype("float32") * 0.3
        p.set_value(noise + 1.0 if name.endswith("norm1.weight") or name.endswith("norm2.weight") else noise)


def tiny(class_num: int = 5, **changes) -> SwinTransformer:
    return SwinTransformer(SwinConfig(**{**TINY, **changes}), class_num=class_num)


# --- parity with PaddleClas ------------------------------------------------------------------

@pytest.fixture(scope="module")
def paddleclas_tiny(tmp_path_factory):
    """PaddleClas's Swin at tiny size, random weights, saved as a .pdparams."""
    paddle.seed(1)
    ref = paddleclas_module().SwinTransformer(class_num=5, drop_path_rate=0.0, **{k: list(v) if isinstance(v, tuple)
                                                                                  else v for k, v in TINY.items()})
    randomise(ref)
    ref.eval()
    path = tmp_path_factory.mktemp("swin") / "paddleclas_tiny.pdparams"
    paddle.save(ref.state_dict(), str(path))
    return ref, path


@pytest.mark.parametrize("side", [32, 64])  # the size it was built for, and another that fits the windows
def test_a_paddleclas_state_dict_loads_with_no_renaming_and_gives_its_logits(paddleclas_tiny, side):
    ref, path = paddleclas_tiny
    model = tiny()
    state = load_state_dict(path)
    assert set(state) == set(model.state_dict())  # no missing or unexpected key, buffers included
    assert load_weights(model, state) == []
    model.eval()
    x = paddle.to_tensor(np.random.default_rng(2).standard_normal((3, 3, side, side)).astype("float32"))
    with paddle.no_grad():
        expected, got = ref(x).numpy(), model(x).numpy()
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_microsofts_unshifted_single_window_stage_is_an_option(paddleclas_tiny):
    _, path = paddleclas_tiny
    shifted, unshifted = tiny(), tiny(shift_single_window=False)
    for model in (shifted, unshifted):
        load_weights(model, load_state_dict(path))
        model.eval()
    with paddle.no_grad():
        at_64 = paddle.randn([2, 3, 64, 64])  # stages 16x16 and 8x8: no stage is one window, both agree
        np.testing.assert_array_equal(shifted(at_64).numpy(), unshifted(at_64).numpy())
        at_32 = paddle.randn([2, 3, 32, 32])  # stage 1 is one 4x4 window: shifted only in PaddleClas's way
        assert not np.allclose(shifted(at_32).numpy(), unshifted(at_32).numpy())


def test_a_window_7_checkpoint_is_resampled_into_a_window_8_model(paddleclas_tiny, tmp_path):
    _, path = paddleclas_tiny
    model = tiny(img_size=64, window_size=8)
    notes = []
    assert load_pretrained(model, path, log=notes.append) == ["head.weight", "head.bias"]
    assert notes == ["resampled relative_position_bias_table from window 4 to 8 "
                     "(bicubic over the grid of relative offsets, per head)"]
    assert model.layers[1].blocks[0].attn.relative_position_bias_table.shape == [15 * 15, 4]
    table = np.tile(np.arange(4, dtype="float32"), (49, 1))  # constant per head stays constant
    np.testing.assert_allclose(resample_relative_position_bias(table, 6), np.tile(np.arange(4), (121, 1)), atol=1e-6)
    assert resample_relative_position_bias(table, 4) is table


def test_converted_attn_mask_buffers_are_dropped():
    model = tiny()
    state = {**model.state_dict(), "layers.0.blocks.1.attn_mask": np.zeros((4, 16, 16), "float32")}
    out, notes = adapt_swin_state_dict(state, model)
    assert "layers.0.blocks.1.attn_mask" not in out and notes[0].startswith("ignored 1 attn_mask")


# --- the registry -------------------------------------------------------------------------------

def test_the_registry_matches_paddleclas_urls_and_constructors(monkeypatch):
    module = paddleclas_module()
    swin_names = list(swin_archs.SWINS)
    assert {n: paddleclas_weights_url(n) for n in swin_names} == module.MODEL_URLS
    monkeypatch.setattr(module, "SwinTransformer", lambda **kwargs: kwargs)
    for name in swin_names:
        kwargs, cfg = getattr(module, name)(), paddleclas_vit_config(name)
        assert (kwargs.get("img_size", 224), kwargs["embed_dim"], list(kwargs["depths"]), list(kwargs["num_heads"]),
                kwargs["window_size"]) == (cfg.img_size, cfg.embed_dim, list(cfg.depths), list(cfg.num_heads),
                                           cfg.window_size), name
        assert (cfg.patch_size, cfg.qkv_bias, cfg.mlp_ratio) == (4, True, 4.0)
        assert paddleclas_normalization(name) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    listed = [line for line in list_backbones().splitlines() if line.startswith("SwinTransformer_")]
    assert len(listed) == len(swin_names) == 6
    paddleclas_vit_config(SWIN_T).embed_dim = 1  # a copy: the registry is untouched
    assert swin_archs.SWINS[SWIN_T].embed_dim == 96
    with pytest.raises(ValueError, match="did you mean 'SwinTransformer_tiny_patch4_window7_224'"):
        paddleclas_vit_config("SwinTransformer_tiny_patch4_window7")


# --- the methods ---------------------------------------------------------------------------------

# Trainable parameters of SwinTransformer_tiny_patch4_window7_224 without the head (method defaults).
SWIN_T_COUNTS = {
    "full": 27_519_354,  # Swin-T's 28,288,354 less its 1000-class head (768 x 1000 + 1000)
    "linear": 0,
    "adaptformer": 570_432,  # bottleneck 64 everywhere: sum over the 12 blocks of 129 * dim + 64
    "lora": 141_312,  # q and v, rank 8: 32 * dim per block, dims summing to 4,416
    "bitfit": 52_224,  # 11 * dim per block + patch conv/norm (192) + merge norms (2,688) + final norm (768)
}
SWIN_T_ADAPTFORMER_DIM_12 = 364_208  # bottleneck "dim//12": 8, 16, 32, 64 by stage


@pytest.fixture(scope="module")
def swin_t_factory():
    paddle.seed(0)
    return lambda: SwinTransformer(paddleclas_vit_config(SWIN_T), class_num=100)


@pytest.mark.parametrize("method", list(SWIN_T_COUNTS))
def test_trainable_parameters_of_swin_t_without_the_head(swin_t_factory, method):
    model = swin_t_factory()
    tuner = get_method(method)
    tuner.apply(model)
    tuner.mark_trainable(model)
    count = count_parameters(model)
    assert count.head == 768 * 100 + 100
    assert count.without_head == SWIN_T_COUNTS[method]


def test_adaptformer_bottleneck_per_stage_on_swin_t(swin_t_factory):
    model = swin_t_factory()
    get_method("adaptformer").apply(model, AdaptFormerConfig(bottleneck="dim//12"))
    get_method("adaptformer").mark_trainable(model)
    assert count_parameters(model).without_head == SWIN_T_ADAPTFORMER_DIM_12
    widths = [model.layers[i].blocks[0].adaptmlp.down_proj.weight.shape for i in range(4)]
    assert widths == [[96, 8], [192, 16], [384, 32], [768, 64]]


def test_the_bottleneck_option_takes_an_int_or_a_per_width_rule():
    assert field_types(AdaptFormerConfig)["bottleneck"] == int | str
    assert coerce("dim//12", int | str, "method.bottleneck") == "dim//12"
    assert coerce(16, int | str, "method.bottleneck") == 16
    with pytest.raises(ConfigError, match=r"^method.bottleneck must be int or str, got 2.5$"):
        coerce(2.5, int | str, "method.bottleneck")
    for bad in ("dim/12", "dim//0", "12"):
        with pytest.raises(ValueError, match=r"must be int, got .* \(a positive whole number, or 'dim//N'"):
            AdaptFormerConfig(bottleneck=bad).resolved()
    with pytest.raises(ValueError, match="gives 0 for a block of width 16"):
        get_method("adaptformer").apply(tiny(), AdaptFormerConfig(bottleneck="dim//32"))


STEP_METHODS = ["full", "linear", "adaptformer", "lora", "bitfit", "ssf", "adapter"]


@pytest.mark.parametrize("method", STEP_METHODS)
def test_one_training_step_moves_only_what_the_method_trains(method):
    paddle.seed(3)
    model = tiny(drop_path_rate=0.1)
    tuner = get_method(method)
    tuner.apply(model)
    tuner.mark_trainable(model)
    before = {n: p.numpy().copy() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if not p.stop_gradient}
    optimizer = paddle.optimizer.AdamW(learning_rate=1e-2, parameters=[p for p in model.parameters()
                                                                        if not p.stop_gradient])
    model.train()
    x = paddle.randn([4, 3, 32, 32])
    loss = paddle.nn.functional.cross_entropy(model(x), paddle.to_tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    after = {n: p.numpy() for n, p in model.named_parameters()}
    for name in set(before) - trainable:  # frozen: bit for bit
        assert np.array_equal(before[name], after[name]), name
    changed = {n for n in trainable if not np.array_equal(before[n], after[n])}
    assert {"head.weight", "head.bias"} <= changed
    own = {n for n in changed if n.startswith("layers.") or n.startswith("patch_embed.") or n.startswith("norm.")}
    assert bool(own) == (method != "linear"), sorted(changed)


# --- export ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["adaptformer", "lora"])  # LoRA merged first, as export does a mergeable method
def test_paddle_inference_of_an_exported_swin_equals_the_dygraph_model(method, tmp_path):
    from paddle.static import InputSpec

    from ppadapt.apps.export import run_inference

    paddle.seed(4)
    model = tiny()
    randomise(model, seed=5)
    get_method(method).apply(model)
    for name, p in model.named_parameters():  # the method's modules start as no-ops: make them count
        if "adaptmlp" in name or "_lora" in name:
            p.set_value(np.random.default_rng(6).standard_normal(p.shape).astype("float32") * 0.3)
    model.eval()
    batch = np.random.default_rng(7).standard_normal((3, 3, 32, 32)).astype("float32")
    with paddle.no_grad():
        expected = model(paddle.to_tensor(batch)).numpy()
    if get_method(method).merge is not None:
        get_method(method).merge(model)
    paddle.jit.save(model, str(tmp_path / "inference"), input_spec=[InputSpec([None, 3, 32, 32], "float32", "image")])
    model_file = next(p for p in (tmp_path / "inference.json", tmp_path / "inference.pdmodel") if p.is_file())
    config = paddle.inference.Config(str(model_file), str(tmp_path / "inference.pdiparams"))
    config.disable_glog_info()
    predictor = paddle.inference.create_predictor(config)
    for n in (1, 3):  # dynamic batch
        np.testing.assert_allclose(run_inference(predictor, batch[:n]), expected[:n], rtol=0, atol=1e-5)


@pytest.mark.parametrize("targets", ["qv", r"attn\.proj|mlp\.fc\d|downsample\.reduction"])
def test_lora_merges_into_swin_and_gives_the_same_logits(targets):
    paddle.seed(8)
    model = tiny()
    randomise(model, seed=9)
    lora = get_method("lora")
    lora.apply(model, LoRAConfig(targets=targets))
    if targets != "qv":  # every stage's Linear layers, the bias-free patch merging's included
        assert hasattr(model.layers[0].downsample, "reduction_lora") and hasattr(model.layers[1].blocks[1].mlp,
                                                                                 "fc2_lora")
    for name, p in model.named_parameters():
        if "_lora." in name:
            p.set_value(np.random.default_rng(10).standard_normal(p.shape).astype("float32") * 0.3)
    model.eval()
    x = paddle.randn([2, 3, 32, 32])
    with paddle.no_grad():
        before = model(x).numpy()
        lora.merge(model)
        np.testing.assert_allclose(model(x).numpy(), before, rtol=0, atol=1e-5)
    assert set(model.state_dict()) == set(tiny().state_dict())


# --- one-line refusals ------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["vpt-shallow", "vpt-deep"])
def test_vpt_on_swin_is_one_clear_line(method):
    with pytest.raises(ValueError, match=r"^VPT does not apply to SwinTransformer: .*Swin attends within") as err:
        get_method(method).apply(tiny())
    assert "\n" not in str(err.value)


def test_sizes_that_do_not_fit_the_windows_are_one_line():
    with pytest.raises(ValueError, match=r"^Swin: a 40x40 input gives a 10x10 map at stage 0, not divisible into "
                                         r"4x4 windows; use a side that is a multiple of 32"):
        tiny(img_size=40)
    with pytest.raises(ValueError, match=r"^Swin: a 48x48 input gives a 6x6 map at stage 1"):
        tiny()(paddle.randn([1, 3, 48, 48]))
    with pytest.raises(ValueError, match=r"^Swin: a 30x30 input is not divisible into 4px patches"):
        tiny()(paddle.randn([1, 3, 30, 30]))


def test_a_vit_state_dict_given_to_swin_names_both_families(tmp_path):
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, class_num=5)
    path = tmp_path / "vit.pdparams"
    paddle.save(vit.state_dict(), str(path))
    with pytest.raises(CheckpointError, match=r"^this checkpoint is a ViT's .* the model is a Swin Transformer"):
        load_pretrained(tiny(), path)


def test_an_ssf_merge_into_the_bias_free_patch_merging_is_refused_before_folding_anything():
    model = tiny()
    ssf = get_method("ssf")
    ssf.apply(model)
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"^cannot merge SSF: layers.0.downsample.reduction has no bias"):
        ssf.merge(model)
    assert all(np.array_equal(before[k], v.numpy()) for k, v in model.state_dict().items())
    assert ssf.is_applied(model)


def test_weight_decay_skips_the_bias_tables_and_layer_ids_run_through_the_stages():
    from ppadapt.training.optim import no_weight_decay

    model = tiny()
    skipped = no_weight_decay(model)
    assert "layers.1.blocks.0.attn.relative_position_bias_table" in skipped
    assert "layers.1.blocks.0.attn.qkv.weight" not in skipped
    ids = [model.layer_id(n) for n in ("patch_embed.proj.weight", "layers.0.blocks.0.attn.qkv.weight",
                                       "layers.0.blocks.1.mlp.fc1.weight", "layers.0.downsample.reduction.weight",
                                       "layers.1.blocks.0.norm1.weight", "layers.1.blocks.1.norm2.bias",
                                       "norm.weight", "head.weight")]
    assert ids == [0, 1, 2, 2, 3, 4, 5, 5]


def test_the_heads_of_the_vit_fit_swin():
    model = tiny(head="bn_linear", head_init="zero")
    assert model.head.weight.shape == [32, 5] and "head.norm._mean" in model.state_dict()
    assert not model.head.weight.numpy().any()
    model.reset_head(3)
    assert model.head.weight.shape == [32, 3]
    model.eval()
    assert model(paddle.randn([2, 3, 32, 32])).shape == [2, 3]
    with pytest.raises(ValueError, match="unknown head 'mlp'"):
        tiny(head="mlp")


@pytest.mark.parametrize("method", ["adaptformer", "full"])
def test_recompute_trains_a_swin_bit_identically(method, monkeypatch):
    """Dropout (AdaptFormer's branch) and drop path on: the recomputed forward draws the same numbers."""
    import paddle.distributed.fleet.utils as fleet_utils

    calls = []
    real = fleet_utils.recompute
    monkeypatch.setattr(fleet_utils, "recompute", lambda *a, **k: calls.append(1) or real(*a, **k))

    from test_recompute import _train

    _, weights, grads, _ = _train(method, recompute=False, steps=2, build=tiny, classes=5)
    assert not calls
    _, weights_rc, grads_rc, _ = _train(method, recompute=True, steps=2, build=tiny, classes=5)
    assert len(calls) == 2 * sum(TINY["depths"])  # every block, in both steps
    assert grads and grads.keys() == grads_rc.keys()
    assert all(np.array_equal(grads[n], grads_rc[n]) for n in grads)
    assert all(np.array_equal(weights[n], weights_rc[n]) for n in weights)


@pytest.mark.parametrize("method", ["full", "adaptformer", "lora"])
def test_the_fused_layer_path_gives_a_swin_the_fast_paths_gradients(method):
    """``model.layers: fused`` on a Swin: its LayerNorms, GELUs and AdaptFormer branches take the
    C++ kernels (dropout off: both paths compute the same function)."""
    from ppadapt.kernels import functions as fused
    from ppadapt.models.fast_layers import use_layers
    from test_fused_kernels import fast_and_fused_agree

    if fused.kernels() is None:
        pytest.skip("the fused kernels cannot be built here")
    rng = np.random.default_rng(2)
    x = paddle.to_tensor(rng.standard_normal((2, 3, 32, 32)).astype("float32"))
    y = paddle.to_tensor(rng.integers(0, 5, (2, 1)).astype("int64"))

    def build(path: str) -> SwinTransformer:
        paddle.seed(0)
        model = tiny()
        spec = get_method(method)
        if method != "full":
            spec.apply_to(model, **({"dropout": 0.0} if method == "adaptformer" else {}))
        set_trainable(model, spec.is_trainable)
        assert use_layers(model, path) > 0
        model.train()
        return model

    fast_and_fused_agree(build, x, y)
