"""Ctrl-C and SIGTERM during training: stop at the end of the batch, save, then quit."""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator


class StopRequest:
    """Set by the first Ctrl-C: training stops at the end of the batch in progress."""

    def __init__(self) -> None:
        self.requested = False


@contextmanager
def stop_on_sigint(stop: StopRequest, announce: bool = True) -> Iterator[StopRequest]:
    """During the block, the first SIGINT (Ctrl-C) or SIGTERM sets ``stop.requested`` (and
    says so on stderr): training stops at the end of the batch in progress and saves a
    checkpoint. A second SIGINT raises KeyboardInterrupt at once; repeated SIGTERMs are
    ignored (``paddle.distributed.launch`` sends several when it is interrupted, and a job
    scheduler sends SIGKILL after its grace period anyway). Outside the main thread, where
    signal handlers cannot be installed, the signals keep their default behaviour."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.requested:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        stop.requested = True
        if announce:
            what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            again = " (press Ctrl-C again to quit at once)" if signum == signal.SIGINT else ""
            print(f"\n{what}: stopping after this batch and saving a resumable checkpoint{again}",
                  file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
