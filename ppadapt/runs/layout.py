"""Where a run's files go: ``<output>/<config>_<stage>_<dataset>[_<method>]``, and whether
that folder can be written before any time is spent."""
from __future__ import annotations

import tempfile
from pathlib import Path

from ..config import Config, transfer_method
from ..errors import TrainingError


def run_dir(cfg: Config, stage: str) -> Path:
    st = cfg.stage(stage)
    name = f"{cfg.name}_{stage}_{st.dataset}"
    if stage == "transfer":
        method = transfer_method(cfg)
        name += {"adaptformer": "_frozen", "full": "_full"}.get(method, f"_{method}")
    return Path(cfg.output) / name


def default_pretrained(cfg: Config) -> Path:
    """Where ``train.py`` with the same config writes its final checkpoint."""
    return run_dir(cfg, "pretrain") / "final.pdparams"


def ensure_writable(run_dir: Path) -> None:
    """Check that files can be written in ``run_dir``, or raise a one-line TrainingError.

    Folders created for the check are removed again, so a start that fails later
    (bad data, missing checkpoint) leaves nothing behind in ``output/``.
    """
    created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-"):
            pass
        for folder in created:  # deepest first
            folder.rmdir()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise TrainingError(f"cannot write to the output directory {run_dir}: {reason} "
                            "(pass --output DIR with a directory you can write to)") from None
