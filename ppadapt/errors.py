"""User-facing errors: each message is one line that names the problem and the fix.

The command-line tools print these as ``error: <message>`` and exit with status 2,
without a traceback. Anything else that escapes is a bug and keeps its traceback.
"""


class PPAdaptError(Exception):
    """Base class of the errors a user can fix (bad input, not bugs)."""


class ConfigError(PPAdaptError):
    """Unknown config key, wrong type or out-of-range value."""


class DataError(PPAdaptError):
    """Missing, corrupt or unsuitable dataset."""


class CheckpointError(PPAdaptError):
    """Missing, corrupt or incompatible checkpoint."""
