"""The command-line tools end to end, as a user runs them, on generated CIFAR archives."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from cifar_archive import write_cifar_archive, write_image_folder

REPO = Path(__file__).resolve().parent.parent
TINY = ["-o", "model.embed_dim=32", "-o", "model.depth=2", "-o", "model.num_heads=2", "-o", "model.patch_size=8",
        "-o", "adapter.bottleneck=8", "-o", "warmup_steps=4", "-o", "log_freq=5", "--batch-size", "16"]


def run(tool, *args, cwd=None):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")}
    return subprocess.run([sys.executable, str(REPO / "ppadapt" / f"{tool}.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or REPO, env=env, timeout=300)


def assert_user_error(proc, *fragments):
    """One ``error:`` line on stderr, exit 2, no traceback."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines and lines[-1].startswith("error: "), proc.stderr
    assert sum(ln.startswith("error: ") for ln in lines) == 1
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    c100 = write_cifar_archive(root / "cifar-100-python.tar.gz", "cifar100", train_per_class=2, test_per_class=1)
    c10 = write_cifar_archive(root / "cifar-10-python.tar.gz", "cifar10", train_per_class=12, test_per_class=4)
    return c100, c10


@pytest.fixture(scope="module")
def pipeline(archives, tmp_path_factory):
    """pretrain cifar100 -> transfer --freeze -> transfer (full), the tutorial's three commands."""
    c100, c10 = archives
    out = tmp_path_factory.mktemp("out")
    pre = run("train", "--pretrain", "cifar100", "--data-file", c100, "--epochs", 2, "--output", out, *TINY)
    frozen = run("transfer", "--freeze", "--data-file", c10, "--epochs", 3, "--output", out, "--lr", 0.2, *TINY)
    full = run("transfer", "--data-file", c10, "--epochs", 3, "--output", out, *TINY)
    return out, pre, frozen, full


def test_pretrain_then_transfer_frozen_and_full(pipeline):
    out, pre, frozen, full = pipeline
    for proc in (pre, frozen, full):
        assert proc.returncode == 0, proc.stderr[-3000:]
    pre_dir, frozen_dir, full_dir = (out / "tutorial_pretrain_cifar100", out / "tutorial_transfer_cifar10_frozen",
                                     out / "tutorial_transfer_cifar10_full")
    for d in (pre_dir, frozen_dir, full_dir):
        assert (d / "final.pdparams").is_file() and (d / "best.pdparams").is_file()
        assert any((d / "vdl").iterdir())
    assert "trainable parameters: " in pre.stdout and "(100.00%)" in pre.stdout
    assert f"loaded pretrained weights from {pre_dir / 'final.pdparams'}" in frozen.stdout
    for proc in (pre, frozen, full):
        assert "best eval:  top-1" in proc.stdout and "final eval: top-1" in proc.stdout
        assert "VisualDL logs:" in proc.stdout and "--language en" in proc.stdout

    pretrained = paddle.load(str(pre_dir / "final.pdparams"))
    tuned = paddle.load(str(frozen_dir / "final.pdparams"))
    backbone = [k for k in pretrained if ".adaptmlp." not in k and not k.startswith("head.")]
    for k in backbone:  # the frozen backbone is bit-identical to the pretrained one
        assert np.array_equal(pretrained[k].numpy(), tuned[k].numpy()), k
    for k in [k for k in pretrained if ".adaptmlp." in k]:
        assert not np.array_equal(pretrained[k].numpy(), tuned[k].numpy()), k
    fully = paddle.load(str(full_dir / "final.pdparams"))
    assert not np.array_equal(pretrained["blocks.0.attn.qkv.weight"].numpy(), fully["blocks.0.attn.qkv.weight"].numpy())


def test_transfer_learns_and_records_the_run(pipeline):
    out = pipeline[0]
    record = json.loads((out / "tutorial_transfer_cifar10_frozen" / "run.json").read_text())
    history = record["history"]
    assert len(history) == 3 and record["class_names"][0] == "airplane"
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert record["best"]["acc_top1"] > 0.3  # 10 classes: chance is 0.1
    full = json.loads((out / "tutorial_transfer_cifar10_full" / "run.json").read_text())
    assert full["params"]["trainable"] == full["params"]["total"]
    assert record["params"]["trainable"] < record["params"]["total"] / 3


def test_dry_run_prints_the_summary_without_data(tmp_path):
    proc = run("transfer", "--dry-run", "--freeze", "-o", "adapter.variant=tutorial", "--output", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "trainable parameters: 1,197,334 of 86,325,526 (1.39%), 4.57 MiB; 1,189,644 without the head"
    assert not any(tmp_path.iterdir())


def test_digits_dry_run_and_help():
    proc = run("transfer", "--dry-run", "--dataset", "digits")
    assert proc.returncode == 0 and proc.stdout.startswith("trainable parameters: ")
    assert run("train", "--help").returncode == 0


def test_image_folder_transfer(tmp_path):
    data = write_image_folder(tmp_path / "imgs", classes=("cat", "dog", "fox"), per_class=6)
    proc = run("transfer", "--dataset", "folder", "--data-dir", data, "--pretrained", "none", "--epochs", 1,
               "--output", tmp_path / "out", *TINY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "out" / "tutorial_transfer_folder_full" / "run.json").read_text())
    assert record["class_names"] == ["cat", "dog", "fox"]


# --- bad input: one line, exit 2, nothing saved is lost ------------------------------------

def test_missing_data_file(tmp_path):
    assert_user_error(run("train", "--pretrain", "cifar100", "--data-file", tmp_path / "nope.tar.gz", *TINY),
                      "not found", "nope.tar.gz")


def test_truncated_archive(archives, tmp_path):
    cut = tmp_path / "cut.tar.gz"
    blob = Path(archives[1]).read_bytes()
    cut.write_bytes(blob[: len(blob) // 2])
    assert_user_error(run("transfer", "--data-file", cut, "--pretrained", "none", *TINY), "cut.tar.gz")


def test_wrong_dataset_archive(archives):
    assert_user_error(run("train", "--pretrain", "cifar100", "--data-file", archives[1], *TINY),
                      "CIFAR-10", "cifar-100-python.tar.gz")


def test_missing_default_pretrained_says_how_to_make_it(archives, tmp_path):
    msg = assert_user_error(run("transfer", "--freeze", "--data-file", archives[1], "--output", tmp_path, *TINY),
                            "pretrained checkpoint not found")
    assert "train.py --pretrain cifar100" in msg


def test_incompatible_pretrained_lists_keys_and_keeps_existing_outputs(pipeline, archives):
    out = pipeline[0]
    ckpt = out / "tutorial_pretrain_cifar100" / "final.pdparams"
    existing = out / "tutorial_transfer_cifar10_frozen" / "final.pdparams"
    before = existing.read_bytes()
    proc = run("transfer", "--freeze", "--data-file", archives[1], "--pretrained", ckpt, "--output", out,
               *TINY, "-o", "model.depth=3")
    assert_user_error(proc, "blocks.2.")
    assert existing.read_bytes() == before


def test_corrupt_pretrained(archives, tmp_path):
    bad = tmp_path / "bad.pdparams"
    bad.write_bytes(b"\x80\x04not a checkpoint" * 10)
    assert_user_error(run("transfer", "--data-file", archives[1], "--pretrained", bad, *TINY), "bad.pdparams")


def test_unknown_config_key():
    assert_user_error(run("train", "-o", "pretrain.epoch=3"), "unknown config key 'epoch'", "did you mean 'epochs'?")


def test_bad_numbers():
    assert_user_error(run("train", "--epochs", 0), "pretrain.epochs must be positive")
    assert_user_error(run("transfer", "--lr", -1), "transfer.lr must be positive")


def test_folder_without_images(tmp_path):
    for split in ("train/a", "train/b", "test/a", "test/b"):
        (tmp_path / split).mkdir(parents=True)
    assert_user_error(run("transfer", "--dataset", "folder", "--data-dir", tmp_path, "--pretrained", "none", *TINY),
                      "no images")


def test_offline_download_failure_says_pass_data_file(monkeypatch, capsys):
    from paddle.dataset import common

    from ppadapt.apps.cli import train_main

    def offline(*args, **kwargs):
        raise RuntimeError("Cannot download https://example.invalid/cifar-100-python.tar.gz")
    monkeypatch.setattr(common, "download", offline)
    assert train_main(["--pretrain", "cifar100", *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: download of cifar-100-python.tar.gz failed") and "--data-file" in err


# --- tuning methods (issue 3) ----------------------------------------------------------------

@pytest.mark.parametrize("args,expected", [
    (["--method", "bitfit"], "102,912 without the head"),
    (["--method", "lora", "-o", "method.rank=8"], "294,912 without the head"),
    (["--freeze", "-o", "adapter.bottleneck=8"], "156,768 without the head"),
    (["--method", "vpt-shallow", "-o", "method.tokens=100"], "76,800 without the head"),
    (["--method", "linear"], "trainable parameters: 7,690 of 85,806,346 (0.01%), 0.03 MiB; 0 without the head"),
])
def test_dry_run_standard_counts_on_paddleclas_vit_b16(args, expected):
    proc = run("transfer", "--dry-run", "--backbone", "ViT_base_patch16_224", *args)
    assert proc.returncode == 0, proc.stderr
    assert expected in proc.stdout


def test_list_methods_and_method_errors():
    proc = run("transfer", "--list-methods")
    assert proc.returncode == 0
    names = [line.split()[0] for line in proc.stdout.splitlines()]
    assert names == ["full", "linear", "adaptformer", "bitfit", "vpt-shallow", "vpt-deep", "lora", "adapter", "ssf"]
    assert_user_error(run("transfer", "--dry-run", "--method", "lorra"), "did you mean 'lora'?")
    assert_user_error(run("transfer", "--dry-run", "--method", "lora", "-o", "method.rnk=2"), "no option 'rnk'")
    assert_user_error(run("transfer", "--dry-run", "--backbone", "ViT_huge"), "unknown backbone")


@pytest.mark.parametrize("method", ["linear", "bitfit", "lora", "adapter", "vpt-shallow", "vpt-deep", "ssf"])
def test_methods_transfer_from_the_pretrained_checkpoint(pipeline, archives, method):
    out = pipeline[0]
    proc = run("transfer", "--method", method, "--data-file", archives[1], "--epochs", 1, "--output", out, *TINY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pre = paddle.load(str(out / "tutorial_pretrain_cifar100" / "final.pdparams"))
    tuned = paddle.load(str(out / f"tutorial_transfer_cifar10_{method}" / "final.pdparams"))
    frozen = [k for k in pre if not k.startswith("head.") and not (method == "bitfit" and k.endswith(".bias"))]
    assert all(np.array_equal(pre[k].numpy(), tuned[k].numpy()) for k in frozen)
    if method not in ("bitfit", "linear"):  # the method's own tensors are saved with the checkpoint
        assert set(tuned) - set(pre)


def test_adapter_file_written_and_resumed(pipeline, archives):
    out = pipeline[0]
    run_dir = out / "tutorial_transfer_cifar10_frozen"
    adapter, full = run_dir / "adapter", run_dir / "final.pdparams"
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert (adapter / "adapter_model.safetensors").stat().st_size < full.stat().st_size / 3
    config = json.loads((adapter / "adapter_config.json").read_text())
    record = json.loads((run_dir / "run.json").read_text())
    assert config["class_names"] == record["class_names"] and config["method"] == "adaptformer"
    proc = run("transfer", "--freeze", "--data-file", archives[1], "--epochs", 1, "--output", out / "again",
               "--pretrained", out / "tutorial_pretrain_cifar100" / "final.pdparams", "--resume-adapter", adapter, *TINY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"loaded adapter {adapter}" in proc.stdout
    wrong = run("transfer", "--method", "lora", "--data-file", archives[1], "--output", out / "again", "--pretrained",
                out / "tutorial_pretrain_cifar100" / "final.pdparams", "--resume-adapter", run_dir, *TINY)
    assert_user_error(wrong, "holds a 'adaptformer' adapter", "--method adaptformer")
