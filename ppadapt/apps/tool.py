"""What every command-line tool shares: the argument parser and how a run ends.

A user-fixable problem (:class:`~ppadapt.errors.PPAdaptError`) ends the program
with one ``error: ...`` line on stderr and exit status 2, never a traceback;
ppadapt's own warnings are one ``warning: ...`` line; Ctrl-C is one line and exit
status 130. Nothing here imports the training stack, so prediction, export and
reporting stay light.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Callable

from ..errors import LegacyConfigNote, PPAdaptError, PPAdaptWarning, TrainingInterrupted

INTERRUPTED = "interrupted: the files already written in the run directory are kept"


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors (unknown option, bad number, bad choice) are one ``error:``
    line with exit status 2, like every other user error, instead of the usage block.

    The line ends with ``(see PROG --help)``; ``help_hint`` replaces ``PROG --help``
    (``bench.py`` says ``(see --help)``).
    """

    def __init__(self, *args, help_hint: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.help_hint = help_hint

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.help_hint or f'{self.prog} --help'})\n")


def run_tool(main: Callable[[], int], *, interrupted: str = INTERRUPTED, notes: str = "stderr") -> int:
    """Run a tool's ``main()`` and return its exit status.

    :class:`~ppadapt.errors.PPAdaptError`: its message as one ``error:`` line, status 2.
    :class:`~ppadapt.errors.TrainingInterrupted` (Ctrl-C during training): its own line
    (where it saved, how to go on), status 130; any other Ctrl-C: ``interrupted``, 130.
    ppadapt's warnings are shown as ``warning: <message>``, and the note of an older config
    form as one ``note:`` line on ``sys.<notes>`` (stdout for a training run, whose log it is); Paddle's warning about
    copy-constructing a tensor, which its own ``train_batch`` triggers every step, is hidden.
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="To copy construct from a tensor")
            others = warnings.showwarning

            def show(message, category, filename, lineno, file=None, line=None) -> None:
                """ppadapt's own warnings as one ``warning: ...`` line; others as they were."""
                if issubclass(category, LegacyConfigNote):
                    print(f"note: {message}", file=getattr(sys, notes), flush=True)
                elif issubclass(category, PPAdaptWarning):
                    print(f"warning: {message}", file=sys.stderr if file is None else file)
                else:
                    others(message, category, filename, lineno, file, line)
            warnings.showwarning = show
            return main()
    except PPAdaptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:  # Ctrl-C during training: says where it saved and how to go on
        print(str(exc), file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
