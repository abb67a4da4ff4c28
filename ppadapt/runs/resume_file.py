"""The resume checkpoint file (``resume.pdckpt``): its name, format tag, and finding and
reading it, safely (what it holds: :mod:`ppadapt.training.resume`).

Reading goes through :mod:`ppadapt.runs.paddle_pickle`: a file that would run code
when unpickled is refused with one line, and so is one whose pickled Paddle generator
state (``rng.paddle``, a pickle inside a uint8 array) would.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError
from ..utils.safe_pickle import UnsafePickleError
from . import paddle_pickle
from .checkpoint import load_failure, refused

RESUME_FILE = "resume.pdckpt"
FORMAT = "ppadapt.resume"
VERSION = 1
TOOLS = {"pretrain": "train.py", "transfer": "transfer.py"}

_FIX = "resume from a run directory that train.py/transfer.py wrote, or start the run again without --resume"


def find_checkpoint(target: Any, default_dir: Path) -> Path:
    """The checkpoint file of ``--resume``: ``True`` means ``default_dir`` (this config and
    stage's run directory); otherwise a run directory or the checkpoint file itself."""
    if target is True or target is None:
        path = default_dir / RESUME_FILE
        if not path.is_file():
            raise CheckpointError(f"nothing to resume: {path} does not exist (no run of this config and "
                                  "stage saved one; start without --resume, or pass --resume RUN_DIR)")
        return path
    path = Path(target).expanduser()
    if path.is_dir():
        path = path / RESUME_FILE
        if not path.is_file():
            raise CheckpointError(f"nothing to resume: {path} does not exist (pass a run directory "
                                  f"that has a {RESUME_FILE}, or the file itself)")
        return path
    if not path.exists():
        raise CheckpointError(f"resume checkpoint not found: {path} (pass a run directory or its {RESUME_FILE})")
    return path


def generator_state(blob: Any, path: Path | str | None = None) -> list:
    """The Paddle generator state pickled into a checkpoint's uint8 array (what
    ``paddle.set_rng_state`` takes); refused with one CheckpointError line if unpickling it
    would run code."""
    try:
        return paddle_pickle.generator_states(np.asarray(blob, dtype=np.uint8).tobytes())
    except UnsafePickleError as exc:
        where = f"resume checkpoint {path}" if path is not None else "a resume checkpoint"
        raise CheckpointError(refused(f"the Paddle generator state in {where}", exc, _FIX)) from None


def _check_generator_states(state: dict, path: Path) -> None:
    """Refuse now, not when an epoch resumes part-way, a generator state that would run code."""
    rng = state.get("rng")
    blobs = rng.get("paddle") if isinstance(rng, dict) else None
    for blob in blobs if isinstance(blobs, (list, tuple)) else [blobs] if blobs is not None else []:
        try:
            generator_state(blob, path)
        except CheckpointError:
            raise
        except Exception:  # unreadable: reported, as before, if and when it is needed
            pass


def load_checkpoint(path: Path, stage: str | None = None) -> dict:
    """Read a resume checkpoint (tensors as numpy arrays), checked; one-line CheckpointError."""
    try:
        state = paddle_pickle.load(path, return_numpy=True)
    except UnsafePickleError as exc:
        raise CheckpointError(refused(f"resume checkpoint {path}", exc, _FIX)) from None
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, ... of a bad file
        raise CheckpointError(f"resume checkpoint {path} cannot be read: truncated, corrupt or not a "
                              f"Paddle file ({load_failure(exc, path)}); resume from another run "
                              "directory, or start the run again without --resume") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a resumable checkpoint: pass the run directory or its {RESUME_FILE} "
                              "(train.py/transfer.py write one there every epoch)")
    if int(state.get("version", 0)) > VERSION:
        raise CheckpointError(f"{path} was written by a newer ppadapt (format version {state['version']}); "
                              "update ppadapt to resume it")
    if stage is not None and state.get("stage") != stage:
        raise CheckpointError(f"{path} is a {state.get('stage')} checkpoint: resume it with "
                              f"{TOOLS.get(state.get('stage'), 'the other tool')}")
    _check_generator_states(state, path)
    return state


__all__ = ["FORMAT", "RESUME_FILE", "TOOLS", "VERSION", "find_checkpoint", "generator_state", "load_checkpoint"]
