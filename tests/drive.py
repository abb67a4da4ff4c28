"""Runs ``train.py`` / ``transfer.py`` / ``tune.py`` in this process with test callbacks, through
the public ``callbacks=`` seam of :func:`ppadapt.apps.cli.train_main` (no test hooks in the library).

    python tests/drive.py [--pause-at E:B --pause-file F] [--dump-dir D] {train|transfer|tune} ARGS...

``--pause-at E:B``: before batch B of epoch E (0-based, counted from the start of this
process's fit), create file F (holding the pid) and wait until SIGINT (or a kill), so a
test can interrupt at a known step; the SIGINT then reaches ppadapt's own handler.
``--dump-dir D``: at the end of training every rank saves its weights as ``D/rank<N>.pdparams``.
"""
import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import ppadapt  # noqa: E402,F401  (first: its thread settings only work before Paddle is imported)
import paddle  # noqa: E402

from ppadapt.apps.cli import train_main, transfer_main  # noqa: E402
from ppadapt.apps.tune import tune_main  # noqa: E402
from ppadapt.runs.checkpoint import atomic_save  # noqa: E402


class PauseAt(paddle.callbacks.Callback):
    """Waits before batch ``batch`` of epoch ``epoch`` until SIGINT, after writing ``marker``."""

    def __init__(self, epoch: int, batch: int, marker: Path) -> None:
        super().__init__()
        self.at, self.marker, self.epoch = (epoch, batch), marker, 0

    def on_epoch_begin(self, epoch=None, logs=None) -> None:
        self.epoch = epoch or 0

    def on_train_batch_begin(self, step, logs=None) -> None:
        if (self.epoch, step) != self.at:
            return
        released = threading.Event()
        previous = signal.getsignal(signal.SIGINT)

        def release(signum, frame):
            signal.signal(signal.SIGINT, previous)
            released.set()
            if callable(previous):
                previous(signum, frame)

        signal.signal(signal.SIGINT, release)
        self.marker.write_text(f"{os.getpid()}\n")
        while not released.is_set():
            time.sleep(0.02)


class DumpWeights(paddle.callbacks.Callback):
    """Every rank's final weights, to check that the processes stayed in sync."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder

    def on_train_end(self, logs=None) -> None:
        rank = paddle.distributed.ParallelEnv().rank
        atomic_save(self.model.network.state_dict(), str(self.folder / f"rank{rank}.pdparams"))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pause-at", metavar="E:B")
    parser.add_argument("--pause-file", type=Path)
    parser.add_argument("--dump-dir", type=Path)
    parser.add_argument("tool", choices=("train", "transfer", "tune"))
    parser.add_argument("args", nargs=argparse.REMAINDER)
    opts = parser.parse_args(argv)
    callbacks = []
    if opts.pause_at:
        epoch, batch = (int(v) for v in opts.pause_at.split(":"))
        callbacks.append(PauseAt(epoch, batch, opts.pause_file))
    if opts.dump_dir:
        callbacks.append(DumpWeights(opts.dump_dir))
    tools = {"train": train_main, "transfer": transfer_main, "tune": tune_main}
    return tools[opts.tool](opts.args, callbacks=callbacks)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
