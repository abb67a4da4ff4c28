"""Training that survives (issue 6): a run killed or interrupted part-way and resumed
with ``--resume`` ends bit-identical to an uninterrupted one; resuming a finished run,
a changed setting and an unwritable output are one-line answers.

The tiny run: ViT dim 32, depth 2, generated CIFAR-10 archive (60 train images, batches
of 16: 4 steps per epoch), 4 epochs, augmentation on, AdaptFormer dropout 0.1 and drop
path 0.1 active. A test callback (``tests/drive.py --pause-at E:B``, through the public
``callbacks=`` seam) parks the process before batch B of epoch E and creates a marker file,
so the kill lands at a known step.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import paddle
import pytest

from cifar_archive import write_cifar_archive

REPO = Path(__file__).resolve().parent.parent
TINY = ["-o", "model.embed_dim=32", "-o", "model.depth=2", "-o", "model.num_heads=2", "-o", "model.patch_size=8",
        "-o", "adapter.bottleneck=8", "-o", "adapter.dropout=0.1", "-o", "model.drop_path_rate=0.1",
        "-o", "warmup_steps=4", "--batch-size", "16", "--epochs", "4", "--quiet"]
RUN = "tutorial_pretrain_cifar10"


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")}
    env.update(extra)
    return env


def train(*args, **env):
    return subprocess.run([sys.executable, str(REPO / "ppadapt" / "train.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, env=_env(**env), timeout=300)


def start_paused(args, at: str, marker: Path) -> subprocess.Popen:
    """Start train.py that waits before batch ``at`` = "E:B" (0-based) once it gets there."""
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "drive.py"), "--pause-at", at, "--pause-file",
                             str(marker), "train", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=_env())
    deadline = time.time() + 120
    while not marker.exists():
        if proc.poll() is not None or time.time() > deadline:
            out, err = proc.communicate(timeout=10) if proc.poll() is not None else ("", "timeout")
            pytest.fail(f"never reached batch {at}: rc {proc.returncode}\n{err[-2000:]}")
        time.sleep(0.05)
    return proc


def weights(run_dir: Path, name: str = "final.pdparams") -> dict:
    return {k: v.numpy() for k, v in paddle.load(str(run_dir / name)).items()}


def assert_bit_identical(a: dict, b: dict):
    assert a.keys() == b.keys()
    different = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def history(run_dir: Path) -> list:
    record = json.loads((run_dir / "run.json").read_text())
    return [{k: v for k, v in e.items() if not k.endswith("_seconds")} for e in record["history"]]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_cifar_archive(tmp_path_factory.mktemp("data") / "cifar-10-python.tar.gz", "cifar10",
                               train_per_class=6, test_per_class=2)


@pytest.fixture(scope="module")
def reference(archive, tmp_path_factory):
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("ref")
    proc = train("--pretrain", "cifar10", "--data-file", archive, "--output", out, *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / RUN


def test_sigkill_in_epoch_3_then_resume_is_bit_identical(archive, reference, tmp_path):
    args = ["--pretrain", "cifar10", "--data-file", archive, "--output", tmp_path, *TINY]
    proc = start_paused(args, "2:1", tmp_path / "marker")  # epoch 3 of 4, after its first batch
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    run_dir = tmp_path / RUN
    state = paddle.load(str(run_dir / "resume.pdckpt"), return_numpy=True)
    assert (state["epoch"], state["batch"], state["global_step"], state["finished"]) == (2, 0, 8, False)
    assert not (run_dir / "final.pdparams").exists()

    resumed = train(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {run_dir / 'resume.pdckpt'} at epoch 3/4 (global step 8)" in resumed.stdout
    assert_bit_identical(weights(reference), weights(run_dir))
    assert_bit_identical(weights(reference, "best.pdparams"), weights(run_dir, "best.pdparams"))
    assert history(run_dir) == history(reference)  # same run.json history, epochs 0..3

    from ppadapt.apps.vdl import read_scalars  # what VisualDL shows: the newest log of the directory
    ref_vdl, vdl = read_scalars(reference / "vdl"), read_scalars(run_dir / "vdl")
    assert vdl == ref_vdl and vdl["train/loss"][0] == list(range(1, 17)) and vdl["eval/acc_top1"][0] == [0, 1, 2, 3]
    # the adapt/* curves measure from the run's start (theta0 kept in the checkpoint), not from the resume point
    assert vdl["adapt/backbone/rel_change"][0] == [0, 1, 2, 3] and "adapt/adaptformer/branch_to_mlp" in vdl
    assert all(set(e["adapt_rel_change"]) == {"backbone", "adaptformer", "head"} for e in history(run_dir))


def test_ctrl_c_saves_mid_epoch_and_resumes_exactly(archive, reference, tmp_path):
    args = ["--pretrain", "cifar10", "--data-file", archive, "--output", tmp_path, *TINY]
    proc = start_paused(args, "2:1", tmp_path / "marker")
    proc.send_signal(signal.SIGINT)  # the batch in progress completes, then the checkpoint is saved
    out, err = proc.communicate(timeout=60)
    run_dir = tmp_path / RUN
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last == (f"interrupted: saved a resumable checkpoint at epoch 3/4, batch 2/4 (global step 10) in "
                    f"{run_dir / 'resume.pdckpt'}; continue with: python ppadapt/train.py --resume {run_dir}")
    state = paddle.load(str(run_dir / "resume.pdckpt"), return_numpy=True)
    assert (state["epoch"], state["batch"], state["reason"]) == (2, 2, "interrupt")

    resumed = train("--resume", run_dir)  # the printed command: the checkpoint holds the settings
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at epoch 3/4, batch 2/4 (global step 10)" in resumed.stdout
    assert_bit_identical(weights(reference), weights(run_dir))
    assert history(run_dir) == history(reference)  # even the interrupted epoch's train loss/accuracy (and adapt_*)
    assert history(run_dir)[2]["adapt_rel_change"]["backbone"] > 0


def test_resume_of_a_finished_run_has_nothing_to_do(reference, capsys):
    from ppadapt.apps.cli import train_main

    before = (reference / "final.pdparams").read_bytes()
    assert train_main(["--resume", str(reference), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"nothing to resume: {reference} finished all 4 epochs\nbest eval:  top-1 ")
    assert (reference / "final.pdparams").read_bytes() == before


def test_resume_refuses_a_changed_setting_and_a_missing_checkpoint(reference, archive, tmp_path, capsys):
    from ppadapt.apps.cli import train_main

    assert train_main(["--resume", str(reference), "--epochs", "6"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: --resume continues a run with its saved settings, but pretrain.epochs is 4 in "
                   f"{reference / 'resume.pdckpt'} and 6 on the command line (drop that option, or start a "
                   "new run without --resume)")
    assert train_main(["--pretrain", "cifar10", "--output", str(tmp_path), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: nothing to resume: {tmp_path / RUN / 'resume.pdckpt'} does not exist")
    assert train_main(["--resume", str(archive)]) == 2
    assert capsys.readouterr().err.startswith(f"error: resume checkpoint {archive} cannot be read: ")
    assert train_main(["--resume", str(reference / "final.pdparams")]) == 2  # weights only
    assert "is not a resumable checkpoint" in capsys.readouterr().err
    from ppadapt.apps.cli import transfer_main
    assert transfer_main(["--resume", str(reference)]) == 2
    assert capsys.readouterr().err.strip().endswith("is a pretrain checkpoint: resume it with train.py")


def test_unwritable_output_fails_before_training(archive, tmp_path, capsys):
    from ppadapt.apps.cli import train_main

    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    assert train_main(["--pretrain", "cifar10", "--data-file", str(archive), "--output", str(blocker / "sub"),
                       *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: cannot write to the output directory {blocker / 'sub' / RUN}: Not a directory "
                   "(pass --output DIR with a directory you can write to)"]
    if os.geteuid() == 0:
        return  # root writes through a read-only mode: that half cannot be tested here
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert train_main(["--pretrain", "cifar10", "--data-file", str(archive), "--output", str(locked),
                           *TINY]) == 2
        assert "Permission denied" in capsys.readouterr().err
    finally:
        locked.chmod(0o755)
