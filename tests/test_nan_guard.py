"""NaN guard (issue 6): a non-finite loss stops training with one line naming the step and
the LR, exits 2, and never writes anything from the bad weights; the last good resumable
checkpoint stays."""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from cifar_archive import write_cifar_archive
from tiny import RandomImages, tiny_model

REPO = Path(__file__).resolve().parent.parent
TINY = ["-o", "model.embed_dim=32", "-o", "model.depth=2", "-o", "model.num_heads=2", "-o", "model.patch_size=8",
        "-o", "adapter.bottleneck=8", "--batch-size", "16", "--epochs", "4", "--quiet"]
RUN = "tutorial_pretrain_cifar10"
MESSAGE = re.compile(r"error: loss is (nan|inf|-inf) at epoch (\d)/4, batch (\d)/4 \(global step (\d+)\), "
                     r"lr ([0-9.e+-]+): training stopped, nothing written from these weights; (.*) "
                     r"\(lower the learning rate and start again\)")


def train(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")}
    return subprocess.run([sys.executable, str(REPO / "ppadapt" / "train.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def error_line(proc) -> re.Match:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    match = MESSAGE.fullmatch(lines[-1])
    assert match, lines[-1]
    return match


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_cifar_archive(tmp_path_factory.mktemp("data") / "cifar-10-python.tar.gz", "cifar10",
                               train_per_class=6, test_per_class=2)


def test_lr_1e6_stops_at_the_first_nan_and_writes_nothing(archive, tmp_path):
    proc = train("--pretrain", "cifar10", "--data-file", archive, "--output", tmp_path, *TINY,
                 "-o", "pretrain.lr=1e6", "-o", "warmup_steps=4")
    match = error_line(proc)
    epoch, batch, step, lr = int(match[2]), int(match[3]), int(match[4]), float(match[5])
    assert (epoch - 1) * 4 + batch == step
    assert lr == pytest.approx(1e6 * min(step, 4) / 4)  # the warmup LR of that very step
    assert match[6] == "no resumable checkpoint was written yet"
    run_dir = tmp_path / RUN
    assert not any((run_dir / name).exists() for name in ("best.pdparams", "final.pdparams", "resume.pdckpt"))


def test_nan_after_good_epochs_keeps_the_last_good_checkpoint(archive, tmp_path):
    # No warmup, lr 1e3: epoch 1 stays finite here, the loss turns NaN during epoch 2.
    proc = train("--pretrain", "cifar10", "--data-file", archive, "--output", tmp_path, *TINY,
                 "-o", "pretrain.lr=1e3", "-o", "warmup_steps=0")
    match = error_line(proc)
    epoch = int(match[2])
    assert epoch >= 2, "the loss went NaN in the first epoch: this test needs a good epoch before it"
    assert float(match[5]) == pytest.approx(1e3 * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / 4)))
    run_dir = tmp_path / RUN
    assert match[6] == (f"the last good resumable checkpoint is {run_dir / 'resume.pdckpt'} "
                        f"(end of epoch {epoch - 1}/4)")
    state = paddle.load(str(run_dir / "resume.pdckpt"), return_numpy=True)
    assert (state["epoch"], state["batch"], state["reason"]) == (epoch - 1, 0, "epoch")
    assert all(np.isfinite(v).all() for v in state["model"].values())
    assert all(np.isfinite(v).all() for v in paddle.load(str(run_dir / "best.pdparams"), return_numpy=True).values())
    assert not (run_dir / "final.pdparams").exists()
    assert len(json.loads((run_dir / "run.json").read_text())["history"]) == epoch - 1


def test_non_finite_weights_at_epoch_end_are_never_saved(tmp_path):
    """A last batch whose update overflows the weights (its own loss still finite) is
    caught before the epoch's checkpoint."""
    from ppadapt.training.callbacks import TrainingGuard
    from ppadapt.errors import TrainingError
    from ppadapt.training.signals import StopRequest

    saved = []

    class Poison(paddle.callbacks.Callback):
        def on_epoch_end(self, epoch=None, logs=None):
            with paddle.no_grad():
                self.model.network.head.weight.set_value(
                    paddle.full_like(self.model.network.head.weight, float("inf")))

    guard = TrainingGuard(tmp_path / "resume.pdckpt", lambda **kw: saved.append(kw) or {}, epochs=2,
                          steps_per_epoch=2, stop=StopRequest(), resume_hint="-")
    with pytest.raises(TrainingError, match=r"weights became non-finite \(head.weight\) by the end of epoch 1/2 "
                                            r"\(global step 2\), lr 0.1: .*no resumable checkpoint was written yet"):
        tiny_model().fit(RandomImages(8), RandomImages(4), batch_size=4, epochs=2, verbose=0,
                         callbacks=[Poison(), guard])
    assert not saved and not (tmp_path / "resume.pdckpt").exists()
