"""A Swin Transformer through the tools (issue 15): ``transfer.py --backbone SwinTransformer_*``.

A PaddleClas Swin (random weights, shrunk with ``-o`` to width 16, stages [2, 2], window 4 at
32 px) is the pretrained file; AdaptFormer, LoRA and the linear probe train on a generated
CIFAR archive, their adapters are served and evaluated on one shared Swin backbone
(equal to each run's own test top-1), and exported with ``paddle.inference`` checked. The
config keys of each family are refused on the other in one line, and a Swin's adapter or
checkpoint on a ViT (and the reverse) is one line naming both.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import paddle
import pytest
from paddleclas.ppcls.arch.backbone.legendary_models import swin_transformer as clas_swin

from cifar_archive import write_cifar_archive
from ppadapt.apps.cli import transfer_main
from ppadapt.apps.evaluate import evaluate_main
from ppadapt.apps.export import export_main
from ppadapt.errors import CheckpointError
from ppadapt.models.paddleclas_archs import backbone_names
from ppadapt.runs.adapter_file import load_adapter

from tiny import tiny_vit

SWIN = "SwinTransformer_tiny_patch4_window7_224"
SMALL = ["model.img_size=32", "model.embed_dim=16", "model.depths=[2, 2]", "model.stage_heads=[2, 4]",
         "model.window_size=4", "transfer.classes=[0, 1, 2]", "transfer.batch_size=8", "transfer.warmup_steps=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Transfer runs (adaptformer, lora, linear, ssf) from one PaddleClas-built tiny Swin."""
    tmp = tmp_path_factory.mktemp("swin_cli")
    paddle.seed(3)
    clas = clas_swin.SwinTransformer(img_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                                     window_size=4, class_num=7)
    ckpt = tmp / "swin.pdparams"
    paddle.save(clas.state_dict(), str(ckpt))
    archive = write_cifar_archive(tmp / "cifar-10-python.tar.gz", train_per_class=6, test_per_class=3)
    out = {}
    for method in ("adaptformer", "lora", "linear", "ssf"):
        argv = ["--backbone", SWIN, "--pretrained", str(ckpt), "--method", method, "--epochs", "1", "--quiet",
                "--data-file", str(archive), "--output", str(tmp / "out")]
        for item in SMALL:
            argv += ["-o", item]
        assert transfer_main(argv) == 0
        out[method] = next((tmp / "out").glob(f"*{SWIN}*_{'frozen' if method == 'adaptformer' else method}"))
    return {"runs": out, "archive": archive, "ckpt": ckpt, "tmp": tmp}


def test_a_swin_trains_through_transfer_py_and_records_its_architecture(runs):
    record = json.loads((runs["runs"]["adaptformer"] / "run.json").read_text())
    model = record["config"]["model"] if "config" in record else record["model"]
    assert model["arch"] == "swin" and model["depths"] == [2, 2] and model["window_size"] == 4
    adapter = json.loads((runs["runs"]["adaptformer"] / "adapter" / "adapter_config.json").read_text())
    assert adapter["backbone"]["arch"] == "swin" and adapter["backbone"]["depths"] == [2, 2]
    assert adapter["options"]["bottleneck"] == 64  # the tutorial config's branches, as on a ViT


def test_many_swin_tasks_on_one_backbone_equal_their_runs(runs, capsys):
    r = runs["runs"]
    argv = ["--backbone", str(r["linear"]), "--adapter", f"a={r['adaptformer'] / 'adapter'}",
            "--adapter", f"l={r['lora'] / 'adapter'}", "--json"]
    assert evaluate_main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["task"] for row in rows] == ["a", "l"]
    for row in rows:
        assert row["recorded_top1"] is not None and row["matches"], row
        assert row["acc_top1"] == pytest.approx(row["recorded_top1"], abs=1e-9), row


def test_export_of_a_swin_run_is_checked_by_paddle_inference(runs, capsys):
    out = runs["tmp"] / "exported"
    assert export_main(["--checkpoint", str(runs["runs"]["lora"]), "--output", str(out)]) == 0
    assert (out / "inference.pdiparams").is_file()
    assert "paddle.inference" in capsys.readouterr().out


def test_ssf_on_a_swin_exports_unmerged(runs, capsys):
    """Swin's patch merging has no bias to take SSF's shift: the export keeps SSF's layers."""
    out = runs["tmp"] / "exported_ssf"
    assert export_main(["--checkpoint", str(runs["runs"]["ssf"]), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ssf stays unmerged, its layers in the graph: cannot merge SSF: layers.0.downsample.reduction" in printed
    assert "checked with paddle.inference" in printed and (out / "inference.pdiparams").is_file()


def test_a_swin_adapter_on_a_vit_and_a_vit_checkpoint_on_a_swin_are_one_line_each(runs, tmp_path):
    with pytest.raises(CheckpointError) as info:
        load_adapter(tiny_vit(class_num=3), runs["runs"]["adaptformer"] / "adapter")
    message = str(info.value)
    assert "\n" not in message and "trained on a Swin Transformer of width 16" in message and "a ViT of" in message
    vit = tmp_path / "vit.pdparams"
    paddle.save(tiny_vit().state_dict(), str(vit))
    argv = ["--backbone", SWIN, "--pretrained", str(vit), "--epochs", "1", "--quiet",
            "--data-file", str(runs["archive"]), "--output", str(tmp_path / "out")]
    for item in SMALL:
        argv += ["-o", item]
    assert transfer_main(argv) == 2


@pytest.mark.parametrize("argv,fragment", [
    (["--backbone", SWIN, "-o", "model.depth=4"], "model.depth is a ViT key but model.arch is swin"),
    (["-o", "model.depths=[2, 2]"], "model.depths is a Swin key but model.arch is vit"),
    (["--backbone", SWIN, "-o", "model.img_size=40"], "not divisible into"),
    (["--backbone", SWIN, "-o", "model.arch=convnext"], "model.arch must be one of vit, swin"),
    (["--backbone", SWIN, "--method", "vpt-deep"], "VPT"),
])
def test_bad_swin_configs_are_one_line(argv, fragment, capsys):
    assert transfer_main(argv + ["--dry-run", "--pretrained", "none"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err


def test_swin_backbones_are_listed(capsys):
    assert transfer_main(["--list-backbones"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == backbone_names()
    tiny = next(line for line in lines if line.startswith(SWIN))
    assert "window 7, width 96, depths 2-2-6-2, heads 3-6-12-24" in tiny and "ImageNet mean/std" in tiny


COUNTS = {  # without the head: full, linear, adaptformer (64), lora (rank 8, q and v), bitfit; adaptformer dim//12
    "SwinTransformer_tiny_patch4_window7_224": (27_519_354, 0, 570_432, 141_312, 52_224, 364_208),
    "SwinTransformer_small_patch4_window7_224": (48_837_258, 0, 1_165_632, 288_768, 102_912, 664_112),
    "SwinTransformer_base_patch4_window7_224": (86_743_224, 0, 1_553_664, 385_024, 137_216, 1_161_948),
}


def _counts_without_head(name: str) -> tuple[int, ...]:
    """The five README methods and AdaptFormer's dim//12, built lazily (no weights allocated)."""
    from ppadapt.apps.cli import use_backbone
    from ppadapt.config import CONFIG_DIR, load_config
    from ppadapt.methods.build import count_transfer_parameters

    out = []
    for method, options in (("full", {}), ("linear", {}), ("adaptformer", {}), ("lora", {}), ("bitfit", {}),
                            ("adaptformer", {"bottleneck": "dim//12"})):
        cfg = load_config(CONFIG_DIR / "tutorial.yaml", [f"method.name={method}"])
        use_backbone(cfg, name)
        cfg.method.options.update(options)
        out.append(count_transfer_parameters(cfg, 10).without_head)
    return tuple(out)


def test_dry_run_prints_the_swin_counts(capsys):
    """``transfer.py --backbone NAME --method M --dry-run`` prints the same count."""
    name = "SwinTransformer_tiny_patch4_window7_224"
    argv = ["--backbone", name, "--method", "adaptformer", "--dry-run", "--pretrained", "none",
            "-o", "method.bottleneck=dim//12"]
    assert transfer_main(argv) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("trainable parameters:"))
    assert line.endswith(f"; {COUNTS[name][5]:,} without the head")


@pytest.mark.parametrize("name", COUNTS)
def test_trainable_counts_at_full_size_are_the_readmes(name):
    assert _counts_without_head(name) == COUNTS[name]
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    row = re.search(rf"^\| `{name}` \|(.*)\|\s*$", text, re.M)
    assert row, f"README has no row for {name}"
    assert [int(c.strip().replace(",", "")) for c in row.group(1).split("|")] == list(COUNTS[name][:5])
    assert f"{COUNTS[name][5]:,}" in text  # the dim//12 count beside the table


def test_bench_measures_a_swin_by_its_backbone_name(capsys):
    from ppadapt.apps.bench.cli import main as bench_main

    argv = ["--backbone", SWIN, "--methods", "full,adaptformer", "--steps", "1", "--warmup", "1", "--batch-size", "2",
            "--json", "--quiet", "--gemm-size", "64"]
    for item in SMALL[:5]:
        argv += ["-o", item]
    assert bench_main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["setup"]["model"].startswith("Swin Transformer 32px patch 4, window 4, width 16, depths 2-2")
    assert [row["method"] for row in report["methods"]] == ["full", "adaptformer"]
