"""User-facing errors: each message is one line that names the problem and the fix.

The command-line tools print these as ``error: <message>`` and exit with status 2,
without a traceback. Anything else that escapes is a bug and keeps its traceback.
"""
from __future__ import annotations


class PPAdaptError(Exception):
    """Base class of the errors a user can fix (bad input, not bugs)."""


class ConfigError(PPAdaptError):
    """Unknown config key, wrong type or out-of-range value."""


class MethodDoesNotFit(ConfigError, ValueError):
    """A tuning method that cannot apply to this backbone, or merge into one of its layers (VPT on
    a Swin, SSF's shift into a layer without a bias). A ``ValueError`` as well, like every other
    refusal of a method's, so library callers catch it as before."""


class DataError(PPAdaptError):
    """Missing, corrupt or unsuitable dataset."""


class CheckpointError(PPAdaptError):
    """Missing, corrupt or incompatible checkpoint."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training; ``str()`` is the one-line message for the user (where the run
    was saved and how to continue). Raised by :mod:`ppadapt.training`, shown by every tool."""


class PPAdaptWarning(UserWarning):
    """Something was skipped or adjusted, and the run goes on (e.g. unreadable images in a
    folder). The command-line tools print it as one ``warning: <message>`` line."""


class LegacyConfigNote(PPAdaptWarning):
    """A config in an older form was read as the current one; the run is unchanged. The
    command-line tools print it as one ``note: <message>`` line, with the tool's other
    notes: ``train.py`` / ``transfer.py`` on their run log (stdout), where an error stays
    the only line on stderr; tools whose stdout is their result (``--dry-run``,
    ``predict.py``, ``export.py``) on stderr; ``bench.py`` with its progress lines."""


class CheckpointWriteError(CheckpointError, OSError):
    """Saving a file failed (disk full, no permission, ...); the file at its path is untouched.

    An ``OSError`` too, so code that handles failed writes keeps working. ``problem`` is the
    message without the generic fix, for callers that know a better one (training says how
    to resume); ``path`` is the file that was being written.
    """

    def __init__(self, problem: str, fix: str, path: str, errno: int | None = None) -> None:
        super().__init__(f"{problem} ({fix})")
        self.problem, self.path, self.errno = problem, path, errno


class TrainingError(PPAdaptError):
    """Training cannot go on (non-finite loss or weights, unwritable output)."""
