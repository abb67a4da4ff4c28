"""PaddleClas's BEiTv2 and CLIP ViTs (issue 15): one ViT class with the family options on.

Each loads a state dict of PaddleClas's own model (the ``paddleclas`` package, random init,
small sizes) through ppadapt's loading code with nothing missing or left over but the head
and gives PaddleClas's logits (or, for CLIP, its image embedding); every method trains on
them; export runs; a checkpoint of another family is one error line."""
import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import paddle
import pytest
from paddleclas.ppcls.arch.backbone.model_zoo import foundation_vit as clas_fvit

from ppadapt.apps.cli import use_backbone, transfer_main
from ppadapt.config import CONFIG_DIR, load_config
from ppadapt.errors import CheckpointError
from ppadapt.methods import METHODS
from ppadapt.methods.build import apply_transfer_method, build_model, count_transfer_parameters
from ppadapt.methods.trainable import trainable_parameters
from ppadapt.models import VisionTransformer, ViTConfig
from ppadapt.models.paddleclas_archs import (BEIT_URLS, BEIT_VITS, CLIP, CLIP_URLS, CLIP_VITS, IMAGENET,
                                             backbone_names, paddleclas_vit_config)
from ppadapt.runs.pretrained import load_pretrained, pretrained_normalization

REPO = Path(__file__).resolve().parent.parent
BEIT = list(BEIT_VITS)
CLIPS = list(CLIP_VITS)
FAMILY = BEIT + CLIPS
SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
FAMILY_KEYS = ("gamma_1", "gamma_2", "relative_position", "ln_pre", "fc_norm")


# --- names, URLs, normalisation -------------------------------------------------------------------

def test_listed_with_paddleclas_urls_and_normalisation(tmp_path, capsys):
    assert set(FAMILY) <= set(backbone_names())
    assert {**BEIT_URLS, **CLIP_URLS} == {name: clas_fvit.MODEL_URLS[name] for name in FAMILY}
    external = tmp_path / "x.pdparams"
    for name in FAMILY:
        want = IMAGENET if name in BEIT else CLIP
        assert pretrained_normalization(f"paddleclas:{name}", external)[:2] == want
        assert pretrained_normalization(str(external), external, name)[:2] == want
    assert transfer_main(["--list-backbones"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "layer scale, relative position bias" in lines["BEiTv2_vit_large_patch16_224"]
    assert "336px patch 14, width 1024 x depth 24" in lines["CLIP_vit_large_patch14_336"]
    assert "CLIP mean/std" in lines["CLIP_vit_base_patch32_224"] and "ln_pre" in lines["CLIP_vit_base_patch32_224"]


def test_default_vit_has_no_family_tensors():
    config = ViTConfig()
    assert (config.abs_pos_embed, config.rel_pos_bias, config.layer_scale, config.pre_norm, config.act,
            config.pool, config.fc_norm, config.output_dim) == (True, False, None, False, "gelu", "token", False, 0)
    keys = VisionTransformer(ViTConfig(**SMALL), 10).state_dict()
    assert "pos_embed" in keys and "proj" not in keys
    assert not [k for k in keys if any(word in k for word in FAMILY_KEYS)]


def test_default_vit_draws_what_it_drew_before_the_family_options():
    """The names, order and random values of a seeded default ViT, as ppadapt built it before
    (sha256 computed at commit 67b0b84): today's checkpoints and runs stay reproducible."""
    import hashlib

    paddle.seed(11)
    model = VisionTransformer(ViTConfig(**SMALL, qkv_bias=True), 10)
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.numpy().tobytes())
    assert digest.hexdigest() == "898b1af0691ff306b105d1eb9c4cd823e4f350b29b2d06c2c806b4214da08610"


# --- PaddleClas's models: keys, logits, embeddings ----------------------------------------------------

def clas_model(name, **extra):
    """PaddleClas's ``foundation_vit`` model of ``name`` at small sizes (the name picks the family's
    differences), random init with its zero-initialised tensors (layer scale, position bias,
    ln_pre) made random so that they matter, and its head at full scale."""
    arch = paddleclas_vit_config(name)
    model = clas_fvit.VisionTransformer(model_name=name, class_num=10, qkv_bias=True, epsilon=arch.epsilon,
                                        head_init_scale=1, **SMALL, **extra)
    for key, p in model.named_parameters():
        if re.search(r"gamma_|relative_position_bias_table|ln_pre", key):
            p.set_value(paddle.randn(p.shape) * 0.5 + (1.0 if key.endswith(("weight", "gamma_1", "gamma_2")) else 0.0))
    return model


def ppadapt_model(name, path, class_num=10, **changes):
    arch = dataclasses.replace(paddleclas_vit_config(name), **{**SMALL, **changes})
    model = VisionTransformer(arch, class_num=class_num)
    notes = []
    kept = load_pretrained(model, path, notes.append)
    return model, kept, notes


@pytest.mark.parametrize("name", FAMILY)
def test_keys_and_shapes_match_the_paddleclas_constructor(name):
    with paddle.LazyGuard():  # names and shapes at the real size: no memory for the weights
        theirs = getattr(clas_fvit, name)(class_num=1000, head_init_scale=1).state_dict()
        theirs = {k: list(v.shape) for k, v in theirs.items()}
        mine = {k: list(v.shape) for k, v in VisionTransformer(paddleclas_vit_config(name), 1000).state_dict().items()}
    width = paddleclas_vit_config(name).embed_dim
    assert theirs.pop("proj")  # the image projection ([width, 512] once initialised): ppadapt's only with output_dim
    assert theirs.pop("head.fc_head.weight") == mine.pop("head.weight")
    assert theirs.pop("head.fc_head.bias") == mine.pop("head.bias")
    assert mine.pop("patch_embed.proj.bias") == [width]  # PaddleClas's foundation ViTs have none: loaded as zero
    assert mine == theirs


@pytest.mark.parametrize("name", ["BEiTv2_vit_base_patch16_224", "BEiTv2_vit_large_patch16_224",
                                  "CLIP_vit_base_patch32_224", "CLIP_vit_large_patch14_224",
                                  "CLIP_vit_large_patch14_336"])
def test_paddleclas_state_dict_loads_with_identical_logits(tmp_path, name):
    paddle.seed(0)
    clas = clas_model(name)
    path = tmp_path / "clas.pdparams"
    paddle.save(clas.state_dict(), str(path))
    model, kept, notes = ppadapt_model(name, path)
    assert sorted(kept) == ["head.bias", "head.weight"]  # nothing missing or unexpected but the new head
    assert len(notes) == 2 and notes[0].startswith("ignored proj [32, 512]")
    assert "patch_embed.proj.bias is not in the checkpoint" in notes[1]
    model.head.weight.set_value(clas.head.fc_head.weight)
    model.head.bias.set_value(clas.head.fc_head.bias)
    clas.eval(), model.eval()
    x = paddle.randn([3, 3, 32, 32])
    expected = clas(x)
    assert expected.abs().max().item() > 0.1
    assert (expected - model(x)).abs().max().item() < 1e-5


@pytest.mark.parametrize("name", CLIPS)
def test_clip_image_embedding_with_its_projection(tmp_path, name):
    """``-o model.output_dim=512``: the features are CLIP's image embedding, ``proj`` loaded;
    PaddleClas's own embedding path (``return_embed``) gives the same: the class token's, or
    for ``CLIP_vit_base_patch16_224`` the mean of the patch tokens' (``pool: mean``)."""
    paddle.seed(1)
    mean = paddleclas_vit_config(name).pool == "mean"
    clas = clas_model(name, return_embed=True, return_mean_embed=mean)
    path = tmp_path / "clas.pdparams"
    paddle.save(clas.state_dict(), str(path))
    model, kept, notes = ppadapt_model(name, path, class_num=0, output_dim=512)
    assert kept == [] and len(notes) == 1 and "patch_embed.proj.bias" in notes[0]
    clas.eval(), model.eval()
    x = paddle.randn([2, 3, 32, 32])
    expected = clas(x) if mean else clas(x)[:, 0]
    assert list(model(x).shape) == [2, 512]
    assert (expected - model(x)).abs().max().item() < 1e-5


def test_a_checkpoint_of_another_family_is_one_line(tmp_path):
    paddle.seed(2)
    clip, beit = "CLIP (ln_pre)", "BEiTv2 (layer scale gamma_1, relative position bias)"
    for source, target, have, want in ((CLIPS[1], BEIT[0], clip, beit), (BEIT[0], CLIPS[0], beit, clip)):
        path = tmp_path / f"{source}.pdparams"
        paddle.save(clas_model(source).state_dict(), str(path))
        with pytest.raises(CheckpointError) as err:
            ppadapt_model(target, path)
        message = str(err.value)
        assert "\n" not in message
        assert f"the checkpoint is a {have} but the model is a {want}; pass the --backbone" in message
    plain = tmp_path / "plain.pdparams"
    paddle.save(VisionTransformer(ViTConfig(**SMALL, qkv_bias=True), 10).state_dict(), str(plain))
    with pytest.raises(CheckpointError, match=r"checkpoint is a plain ViT \(pos_embed, .*model is a BEiTv2"):
        ppadapt_model("BEiTv2_vit_base_patch16_224", plain)


# --- every method on every family: one training step, frozen tensors untouched ----------------------

def family_config(name, method, small=True):
    overrides = [f"method.name={method}", "transfer.pretrained=none"]
    overrides += ["method.bottleneck=64"] if method == "adaptformer" else []
    if small:
        overrides += [f"model.{k}={v}" for k, v in SMALL.items()]
    cfg = load_config(CONFIG_DIR / "tutorial.yaml", overrides, stage="transfer")
    use_backbone(cfg, name, overrides)
    return cfg


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("name", FAMILY)
def test_one_training_step_moves_only_the_methods_tensors(name, method):
    paddle.seed(3)
    cfg = family_config(name, method)
    model = build_model(cfg, 10)
    apply_transfer_method(model, cfg)
    model.train()
    trainable = {id(p) for p in trainable_parameters(model)}
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    frozen = [k for k, p in model.named_parameters() if id(p) not in trainable]
    opt = paddle.optimizer.Momentum(learning_rate=0.5, momentum=0.9, parameters=trainable_parameters(model))
    x, y = paddle.randn([4, 3, 32, 32]), paddle.to_tensor([[0], [1], [2], [3]], dtype="int64")
    loss = paddle.nn.functional.cross_entropy(model(x), y)
    assert np.isfinite(loss.item())
    loss.backward()
    opt.step()
    after = model.state_dict()
    for key in frozen + [k for k in before if "relative_position_index" in k]:
        assert np.array_equal(before[key], after[key].numpy()), (name, method, key)
    moved = [k for k, p in model.named_parameters() if id(p) in trainable and not k.startswith("head.")
             and not np.array_equal(before[k], after[k].numpy())]
    assert bool(moved) == (method != "linear"), (name, method)


# --- trainable parameters at the real sizes (the README's table) ------------------------------------

COUNTS = {  # without the head: full, linear, adaptformer (bottleneck 64), lora (rank 8, q and v), bitfit
    "BEiTv2_vit_base_patch16_224": (85_771_200, 0, 1_189_632, 294_912, 102_912),
    "BEiTv2_vit_large_patch16_224": (303_430_144, 0, 3_171_840, 786_432, 272_384),
    "CLIP_vit_base_patch16_224": (85_800_192, 0, 1_189_632, 294_912, 103_680),
    "CLIP_vit_base_patch32_224": (87_456_768, 0, 1_189_632, 294_912, 103_680),
    "CLIP_vit_large_patch14_224": (303_180_800, 0, 3_171_840, 786_432, 273_408),
    "CLIP_vit_large_patch14_336": (303_508_480, 0, 3_171_840, 786_432, 273_408),
}
COUNTED = ("full", "linear", "adaptformer", "lora", "bitfit")


@pytest.mark.parametrize("name", FAMILY)
def test_trainable_parameter_counts_at_full_size(name):
    """What ``transfer.py --backbone NAME --method M --dry-run`` counts (built lazily: no weights)."""
    for method, expected in zip(COUNTED, COUNTS[name]):
        cfg = family_config(name, method, small=False)
        assert count_transfer_parameters(cfg, 10).without_head == expected, (name, method)


def test_readme_table_has_the_computed_counts():
    text = (REPO / "README.md").read_text()
    for name, counts in COUNTS.items():
        row = re.search(rf"^\| `{name}` \|(.*)\|\s*$", text, re.M)
        assert row, f"README has no row for {name}"
        cells = [c.strip() for c in row.group(1).split("|")]
        assert [int(c.replace(",", "")) for c in cells[-5:]] == list(counts), name


# --- export + paddle.inference -----------------------------------------------------------------------

@pytest.mark.parametrize("name,method", [("BEiTv2_vit_base_patch16_224", "lora"),
                                         ("BEiTv2_vit_base_patch16_224", "vpt-deep"),
                                         ("CLIP_vit_base_patch16_224", "adaptformer"),
                                         ("CLIP_vit_base_patch32_224", "ssf")])
def test_export_and_paddle_inference_agree(tmp_path, name, method):
    """A real run from a PaddleClas checkpoint (shrunk by -o), exported (LoRA merged) and run by
    paddle.inference with the dygraph model's outputs."""
    from cifar_archive import write_cifar_archive
    from ppadapt.apps.export import export_model
    from ppadapt.runs.loading import load_run

    paddle.seed(4)
    ckpt = tmp_path / "clas.pdparams"
    paddle.save(clas_model(name).state_dict(), str(ckpt))
    archive = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", train_per_class=4, test_per_class=1)
    argv = ["--backbone", name, "--pretrained", str(ckpt), "--method", method, "--epochs", "1", "--quiet",
            "--data-file", str(archive), "--output", str(tmp_path / "out")]
    for item in [f"model.{k}={v}" for k, v in SMALL.items()] + ["transfer.classes=[0, 1]", "transfer.batch_size=8",
                                                               "transfer.warmup_steps=1"]:
        argv += ["-o", item]
    assert transfer_main(argv) == 0
    run_dir = next(p.parent for p in (tmp_path / "out").rglob("run.json"))
    result = export_model(run_dir, tmp_path / "export", log=lambda line: None)
    assert result.max_abs_diff < 1e-5
    config = paddle.inference.Config(str(result.model_file), str(result.params_file))
    config.disable_glog_info()
    predictor = paddle.inference.create_predictor(config)
    batch = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype("float32")
    predictor.get_input_handle(predictor.get_input_names()[0]).copy_from_cpu(batch)
    predictor.run()
    got = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
    reference = load_run(run_dir).model
    with paddle.no_grad():
        expected = reference(paddle.to_tensor(batch)).numpy()
    assert np.abs(got - expected).max() < 1e-5


# --- the relative position bias: its layout, VPT's prompts, the fused layer path ------------------

def test_relative_position_index_is_paddleclas_buffer():
    clas = clas_fvit.VisionTransformer(model_name=BEIT[0], class_num=0, **SMALL)
    mine = VisionTransformer(dataclasses.replace(paddleclas_vit_config(BEIT[0]), **SMALL), 0)
    for block in (0, 1):
        key = f"blocks.{block}.attn.relative_position_index"
        theirs, ours = clas.state_dict()[key], mine.state_dict()[key]
        assert ours.dtype == theirs.dtype and np.array_equal(ours.numpy(), theirs.numpy())


def test_prompt_tokens_get_no_position_bias():
    paddle.seed(5)
    attn = VisionTransformer(dataclasses.replace(paddleclas_vit_config(BEIT[0]), **SMALL), 0).blocks[0].attn
    attn.relative_position_bias_table.set_value(paddle.randn(attn.relative_position_bias_table.shape))
    tokens = attn.relative_position_index.shape[0]
    plain, padded = attn.position_bias(tokens).numpy(), attn.position_bias(tokens + 3).numpy()
    assert padded.shape == (2, tokens + 3, tokens + 3)
    assert not padded[:, 1:4].any() and not padded[:, :, 1:4].any()  # the prompts' rows and columns
    keep = [0] + list(range(4, tokens + 3))
    assert np.array_equal(padded[:, keep][:, :, keep], plain)


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="no C++ compiler: the fused kernels cannot be built here")
@pytest.mark.parametrize("method", ["full", "vpt-deep"])
def test_fused_layer_path_gives_the_fast_paths_outputs_and_gradients(method):
    """``model.layers: fused`` on BEiTv2 (its scores take the bias before the softmax) and CLIP."""
    from ppadapt.models.fast_layers import use_layers

    x, y = paddle.randn([3, 3, 32, 32]), paddle.to_tensor([[0], [1], [2]], dtype="int64")
    for name in (BEIT[0], CLIPS[0]):
        results = {}
        for layers in ("fast", "fused"):
            paddle.seed(6)
            cfg = family_config(name, method)
            model = build_model(cfg, 10)
            for key, p in model.named_parameters():
                if "relative_position_bias_table" in key:
                    p.set_value(paddle.randn(p.shape))
            apply_transfer_method(model, cfg)
            use_layers(model, layers)
            model.train()
            logits = model(x)
            paddle.nn.functional.cross_entropy(logits, y).backward()
            results[layers] = logits.numpy(), {k: p.grad.numpy() for k, p in model.named_parameters()
                                                if p.grad is not None}
        (out_a, grads_a), (out_b, grads_b) = results["fast"], results["fused"]
        np.testing.assert_allclose(out_b, out_a, rtol=1e-5, atol=1e-5)
        assert grads_a.keys() == grads_b.keys() and grads_a
        for key in grads_a:
            np.testing.assert_allclose(grads_b[key], grads_a[key], rtol=1e-3, atol=1e-6, err_msg=f"{name} {key}")


def test_beit_weights_load_at_another_image_size(tmp_path):
    """``-o model.img_size=48``: each block's bias table is resized over its offset grid (7x7 ->
    11x11, as ``interpolate`` would, class-token entries kept), with the model's index buffer."""
    paddle.seed(7)
    clas = clas_model(BEIT[0])
    path = tmp_path / "clas.pdparams"
    paddle.save(clas.state_dict(), str(path))
    model, kept, notes = ppadapt_model(BEIT[0], path, img_size=48)
    assert sorted(kept) == ["head.bias", "head.weight"]
    assert notes[-1].startswith("resampled 2 relative_position_bias_table from 7x7 to 11x11 offsets")
    table = clas.state_dict()["blocks.1.attn.relative_position_bias_table"]
    grid = table[:-3].reshape([1, 7, 7, 2]).transpose([0, 3, 1, 2])
    expected = paddle.nn.functional.interpolate(grid, size=[11, 11], mode="bicubic", align_corners=False)
    got = model.blocks[1].attn.relative_position_bias_table
    np.testing.assert_allclose(got[:-3].numpy(), expected.transpose([0, 2, 3, 1]).reshape([121, 2]).numpy(),
                               rtol=1e-5, atol=1e-6)
    assert np.array_equal(got[-3:].numpy(), table[-3:].numpy())
    model.eval()
    assert list(model(paddle.randn([1, 3, 48, 48])).shape) == [1, 10]


def test_an_adapter_records_its_family_and_fits_only_it():
    from ppadapt.runs.adapter_file import backbone_geometry, check_adapter_fits

    plain = backbone_geometry(paddleclas_vit_config("MAE_vit_base_patch16"))
    assert not set(plain) & {"abs_pos_embed", "rel_pos_bias", "layer_scale", "pre_norm", "pool"}  # as before
    beit = backbone_geometry(paddleclas_vit_config(BEIT[0]))
    assert (beit["abs_pos_embed"], beit["rel_pos_bias"], beit["layer_scale"]) == (False, True, 0.1)
    check_adapter_fits({"backbone": beit}, paddleclas_vit_config(BEIT[0]))
    check_adapter_fits({"backbone": beit}, dataclasses.replace(paddleclas_vit_config(BEIT[0]), layer_scale=1.0))
    for other in (plain, backbone_geometry(paddleclas_vit_config(CLIPS[0]))):
        with pytest.raises(CheckpointError, match="relative_position|rel_pos_bias") as err:
            check_adapter_fits({"backbone": other}, paddleclas_vit_config(BEIT[0]))
        assert "\n" not in str(err.value)


def test_every_family_option_at_once_trains_and_numbers_its_layers():
    """QuickGELU, mean pooling, fc_norm and proj (no PaddleClas backbone uses them by default)
    with BEiT's and CLIP's tensors: the forward, a backward, LR layers and weight decay."""
    paddle.seed(8)
    config = ViTConfig(**SMALL, qkv_bias=True, abs_pos_embed=False, rel_pos_bias=True, layer_scale=0.1,
                       pre_norm=True, act="quick_gelu", pool="mean", fc_norm=True, output_dim=16)
    model = VisionTransformer(config, class_num=10)
    assert model.num_features == 16 and list(model.head.weight.shape) == [16, 10]
    x = paddle.randn([2, 3, 32, 32])
    assert abs(float(model.blocks[0].mlp.act(paddle.to_tensor([1.0]))) - 1.0 / (1.0 + np.exp(-1.702))) < 1e-6
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    ids = {name: model.layer_id(name) for name, _ in model.named_parameters()}
    assert ids["ln_pre.weight"] == 0 and ids["blocks.1.gamma_2"] == 2 and ids["fc_norm.bias"] == ids["proj"] == 3
    assert model.no_weight_decay() == {"cls_token", "blocks.0.attn.relative_position_bias_table",
                                       "blocks.1.attn.relative_position_bias_table"}
    model.reset_head(3)
    assert list(model.head.weight.shape) == [16, 3]


def test_ssf_scales_clips_ln_pre_too():
    cfg = family_config(CLIPS[1], "ssf")
    model = build_model(cfg, 10)
    apply_transfer_method(model, cfg)
    names = {k for k, p in model.named_parameters() if not p.stop_gradient}
    assert {"patch_embed.proj_ssf.scale", "ln_pre_ssf.scale", "ln_pre_ssf.shift", "norm_ssf.shift"} <= names


def test_another_familys_checkpoint_on_the_command_line_is_one_error_line(tmp_path, capsys):
    from cifar_archive import write_cifar_archive

    paddle.seed(9)
    ckpt = tmp_path / "clip.pdparams"
    paddle.save(clas_model(CLIPS[1]).state_dict(), str(ckpt))
    archive = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", train_per_class=2, test_per_class=1)
    argv = ["--backbone", BEIT[0], "--pretrained", str(ckpt), "--epochs", "1", "--quiet", "--data-file", str(archive),
            "--output", str(tmp_path / "out")]
    for item in [f"model.{k}={v}" for k, v in SMALL.items()]:
        argv += ["-o", item]
    assert transfer_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the checkpoint is a CLIP (ln_pre) but the model is a BEiTv2")
