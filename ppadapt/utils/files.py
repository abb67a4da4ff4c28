"""File-system checks the tools make before they spend time on data or models."""
from __future__ import annotations

import tempfile
from pathlib import Path

from ..errors import PPAdaptError


def ensure_writable(folder: Path, error: type[PPAdaptError] = PPAdaptError) -> None:
    """Check that files can be written in ``folder``, or raise a one-line ``error``.

    Folders created for the check are removed again, so a start that fails later
    (bad data, missing checkpoint) leaves nothing behind.
    """
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
        for path in created:  # deepest first
            path.rmdir()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise error(f"cannot write to the output directory {folder}: {reason} "
                    "(pass --output DIR with a directory you can write to)") from None
