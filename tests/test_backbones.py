"""PaddleClas backbones beyond ViT (issue 12): DeiT tiny/small/base and MAE ViT-B.

Each loads from a PaddleClas state dict with nothing missing or left over but the head,
computes PaddleClas's logits, and is normalised as its weights were trained."""
import dataclasses

import paddle
import pytest
from paddleclas.ppcls.arch.backbone.model_zoo import distilled_vision_transformer as clas_deit
from paddleclas.ppcls.arch.backbone.model_zoo import foundation_vit as clas_fvit

from cifar_archive import write_cifar_archive
from ppadapt.apps.cli import use_backbone, transfer_main
from ppadapt.config import CONFIG_DIR, load_config
from ppadapt.methods.build import count_transfer_parameters
from ppadapt.models import VisionTransformer
from ppadapt.models.paddleclas_archs import (DEIT_URLS, DEIT_VITS, FOUNDATION_URLS, FOUNDATION_VITS, IMAGENET,
                                             backbone_names, paddleclas_vit_config)
from ppadapt.runs.pretrained import load_pretrained, pretrained_normalization

NEW = ["DeiT_tiny_patch16_224", "DeiT_small_patch16_224", "DeiT_base_patch16_224", "MAE_vit_base_patch16"]
MAE = "MAE_vit_base_patch16"
SMALL = dict(embed_dim=32, depth=2, num_heads=2)  # for the ViT-B-wide ones: same code, small sizes


def module_of(name):
    return clas_fvit if name.startswith("MAE") else clas_deit


# --- architectures and URLs ------------------------------------------------------------------

def test_every_new_backbone_is_listed_with_its_paddleclas_url():
    assert set(NEW) <= set(backbone_names())
    assert DEIT_URLS == {name: clas_deit.MODEL_URLS[name] for name in DEIT_VITS}
    assert FOUNDATION_URLS == {name: clas_fvit.MODEL_URLS[name] for name in FOUNDATION_VITS}


@pytest.mark.parametrize("name", NEW)
def test_keys_and_shapes_match_the_paddleclas_constructor(name):
    extra = {"head_init_scale": 1} if name == MAE else {}  # its head rescaling needs real memory
    with paddle.LazyGuard():  # names and shapes only: no memory for the weights
        theirs = getattr(module_of(name), name)(class_num=1000, **extra).state_dict()
        theirs = {k: list(v.shape) for k, v in theirs.items()}
        mine = {k: list(v.shape) for k, v in VisionTransformer(paddleclas_vit_config(name), 1000).state_dict().items()}
    if name == MAE:
        # foundation_vit: a classifier Head (head.fc_head), an unused image projection, no patch bias
        assert theirs.pop("proj")  # [768, 512] once initialised
        assert theirs.pop("head.fc_head.weight") == mine.pop("head.weight")
        assert theirs.pop("head.fc_head.bias") == mine.pop("head.bias")
        assert mine.pop("patch_embed.proj.bias") == [768]
    assert mine == theirs


# --- loading PaddleClas's state dicts: same logits -----------------------------------------------

def clas_model(name, mae_epsilon=1e-6):
    """A random-init PaddleClas model of ``name`` at 32 px: DeiT tiny/small by their own
    constructors, DeiT-B and MAE by their classes with the constructor's settings at small
    sizes; ``mae_epsilon`` None: the MAE constructor's own (the class default, 1e-5)."""
    if name in ("DeiT_tiny_patch16_224", "DeiT_small_patch16_224"):
        return getattr(clas_deit, name)(img_size=32, class_num=10), {}
    if name == "DeiT_base_patch16_224":
        return clas_deit.VisionTransformer(img_size=32, patch_size=8, class_num=10, qkv_bias=True, epsilon=1e-6,
                                           **SMALL), dict(patch_size=8, **SMALL)
    extra = {} if mae_epsilon is None else {"epsilon": mae_epsilon}
    return clas_fvit.VisionTransformer(model_name=MAE, img_size=32, patch_size=8, class_num=10, qkv_bias=True,
                                       **SMALL, **extra), dict(patch_size=8, **SMALL)


def head_of(clas):
    return clas.head.fc_head if isinstance(clas.head, clas_fvit.Head) else clas.head


@pytest.mark.parametrize("name,paddleclas_epsilon", [(n, False) for n in NEW] + [(MAE, True)])
def test_paddleclas_state_dict_loads_with_identical_logits(tmp_path, name, paddleclas_epsilon):
    """MAE: PaddleClas's constructor leaves the LayerNorm epsilon at 1e-5, ppadapt uses MAE's
    1e-6; with the same epsilon on both sides (-o model.epsilon=1e-5) the logits agree."""
    paddle.seed(0)
    clas, sizes = clas_model(name, mae_epsilon=None if paddleclas_epsilon else 1e-6)
    path = tmp_path / "clas.pdparams"
    paddle.save(clas.state_dict(), str(path))
    arch = dataclasses.replace(paddleclas_vit_config(name), img_size=32, **sizes)
    if paddleclas_epsilon:
        arch = dataclasses.replace(arch, epsilon=1e-5)
    model = VisionTransformer(arch, class_num=10)
    notes = []
    kept = load_pretrained(model, path, notes.append)
    assert sorted(kept) == ["head.bias", "head.weight"]  # the head is always new; nothing else missing
    if name == MAE:
        assert len(notes) == 2 and notes[0].startswith("ignored proj [32, 512]")
        assert "patch_embed.proj.bias is not in the checkpoint" in notes[1]
        assert float(model.patch_embed.proj.bias.abs().max()) == 0.0
    else:
        assert notes == []
    model.head.weight.set_value(head_of(clas).weight)
    model.head.bias.set_value(head_of(clas).bias)
    clas.eval(), model.eval()
    x = paddle.randn([3, 3, 32, 32])
    assert (clas(x) - model(x)).abs().max().item() < 1e-5


def test_mae_through_the_command_line_with_an_external_file(tmp_path, capsys):
    """--backbone MAE_vit_base_patch16 --pretrained FILE (shrunk by -o): the two foundation-ViT
    differences are noted, nothing else is missing, images get ImageNet's mean/std."""
    paddle.seed(1)
    clas, _ = clas_model(MAE)
    ckpt = tmp_path / "mae.pdparams"
    paddle.save(clas.state_dict(), str(ckpt))
    archive = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", train_per_class=4, test_per_class=1)
    small = ["model.img_size=32", "model.patch_size=8", "model.embed_dim=32", "model.depth=2", "model.num_heads=2",
             "transfer.classes=[0, 1]", "transfer.batch_size=8", "transfer.warmup_steps=1"]
    argv = ["--backbone", MAE, "--pretrained", str(ckpt), "--method", "adaptformer", "--epochs", "1", "--quiet",
            "--data-file", str(archive), "--output", str(tmp_path / "out")]
    for item in small:
        argv += ["-o", item]
    assert transfer_main(argv) == 0
    out = capsys.readouterr().out
    assert "ignored proj [32, 512]" in out and "patch_embed.proj.bias is not in the checkpoint" in out
    assert f"loaded pretrained weights from {ckpt} (" in out and "(2 new tensors left at init)" in out
    assert "normalisation: mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)" in out


# --- normalisation ------------------------------------------------------------------------------------

def test_normalisation_is_the_backbones(tmp_path):
    half = ((0.5,) * 3, (0.5,) * 3)
    external = tmp_path / "x.pdparams"
    for name in NEW:
        assert pretrained_normalization(f"paddleclas:{name}", external)[:2] == IMAGENET
        assert pretrained_normalization(str(external), external, name)[:2] == IMAGENET  # --backbone NAME --pretrained
    assert pretrained_normalization("paddleclas:ViT_base_patch16_224", external)[:2] == half
    assert pretrained_normalization(str(external), external, "ViT_base_patch16_224")[:2] == half
    assert pretrained_normalization(str(external), external)[:2] == half  # no backbone: as before


def test_backbone_sets_its_name_and_keeps_the_configs_head():
    overrides = ["model.head=bn_linear", "model.img_size=32"]
    cfg = load_config(CONFIG_DIR / "tutorial.yaml", overrides + ["model.head_init=zero"], stage="transfer")
    use_backbone(cfg, "DeiT_small_patch16_224", overrides)
    m = cfg.model
    assert (m.backbone, m.embed_dim, m.num_heads, m.epsilon, m.img_size) == ("DeiT_small_patch16_224", 384, 6,
                                                                              1e-6, 32)
    assert (m.head, m.head_init) == ("bn_linear", "zero")  # not the backbone's: kept, -o or not
    assert cfg.transfer.pretrained == "paddleclas:DeiT_small_patch16_224"


# --- trainable parameters at 224 (the README's table) -------------------------------------------

COUNTS = {  # without the head: full, linear, adaptformer (bottleneck 64), lora (rank 8, q and v), bitfit
    "DeiT_tiny_patch16_224": (5_524_416, 0, 297_984, 73_728, 25_728),
    "DeiT_small_patch16_224": (21_665_664, 0, 595_200, 147_456, 51_456),
    "DeiT_base_patch16_224": (85_798_656, 0, 1_189_632, 294_912, 102_912),
    "MAE_vit_base_patch16": (85_798_656, 0, 1_189_632, 294_912, 102_912),
}
METHODS = ("full", "linear", "adaptformer", "lora", "bitfit")


@pytest.mark.parametrize("name", NEW)
def test_trainable_parameter_counts_at_224(name):
    """What ``transfer.py --backbone NAME --method M --dry-run`` counts (built lazily: no weights)."""
    for method, expected in zip(METHODS, COUNTS[name]):
        overrides = [f"method.name={method}", "transfer.pretrained=none"]
        overrides += ["method.bottleneck=64"] if method == "adaptformer" else []
        cfg = load_config(CONFIG_DIR / "tutorial.yaml", overrides, stage="transfer")
        use_backbone(cfg, name, overrides)
        assert cfg.model.img_size == 224
        assert count_transfer_parameters(cfg, 10).without_head == expected, (name, method)


def test_dry_run_prints_the_same_count(capsys):
    argv = ["--backbone", "DeiT_tiny_patch16_224", "--method", "adaptformer", "-o", "method.bottleneck=64",
            "--dry-run", "--pretrained", "none"]
    assert transfer_main(argv) == 0
    assert capsys.readouterr().out.strip().endswith(f"{COUNTS['DeiT_tiny_patch16_224'][2]:,} without the head")


# --- listing and bad names ---------------------------------------------------------------------------

def test_list_backbones(capsys):
    assert transfer_main(["--list-backbones"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == backbone_names()
    mae = next(line for line in lines if line.startswith(MAE))
    assert "224px patch 16, width  768 x depth 12" in mae and "ImageNet mean/std" in mae and "foundation_vit" in mae


@pytest.mark.parametrize("argv,fragments", [
    (["--backbone", "DeiT_tiny_patch16"], ("unknown backbone 'DeiT_tiny_patch16'", "did you mean "
                                           "'DeiT_tiny_patch16_224'?", "--list-backbones")),
    (["--backbone", "MAE_vit_base_patch16", "-o", "model.head=bn-linear"],
     ("model.head: unknown head 'bn-linear'; did you mean 'bn_linear'?",)),
    (["-o", "model.head_init=xavier"], ("model.head_init: unknown head_init 'xavier'; choose one of default, zero",)),
    (["-o", "model.backbone=MAE_vit_base"], ("model.backbone: unknown backbone 'MAE_vit_base'; did you mean "
                                             "'MAE_vit_base_patch16'?",)),
])
def test_bad_names_are_one_line_errors(argv, fragments, capsys):
    assert transfer_main(argv + ["--dry-run", "--pretrained", "none"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in err[0], err[0]
