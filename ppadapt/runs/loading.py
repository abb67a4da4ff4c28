"""Rebuild a trained model from what a training run left on disk.

A run directory (see :func:`ppadapt.training.engine.run_stage`) holds ``best.pdparams``,
``final.pdparams`` (``.safetensors`` with ``save_format: safetensors``) and ``run.json``,
whose ``config`` is the full config of the run. :func:`load_run` rebuilds the same
network from that config (architecture, AdaptFormer branches, the transfer's tuning
method applied exactly as the transfer applied it), loads the weights strictly (every
tensor, no extra one, same shapes), and returns it in eval mode with every parameter
frozen, together with what a caller needs to preprocess images the way the run
evaluated them (class names, mean/std, image size).

Shared by :mod:`ppadapt.apps.predict` and :mod:`ppadapt.apps.export`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models.build import describe_architecture
from ..config import config_from_dict, transfer_method, validate
from ..errors import CheckpointError, ConfigError
from ..methods.build import apply_transfer_method, build_model
from .adapter_file import ADAPTER_DIR, CONFIG_FILE, META_KEY, TENSORS_FILE
from .checkpoint import load_state_dict, load_weights
from .layout import find_weights
from .record import RUN_RECORD, RunRecord, read_record

WEIGHTS = ("best", "final")
REQUIRED = ("config", "class_names", "mean", "std")  # what a rebuild needs from run.json


@dataclass
class LoadedRun:
    """A rebuilt model and what its run recorded about its inputs and outputs."""

    model: Any  # ppadapt.models.VisionTransformer, in eval mode, every parameter frozen
    config: Any  # ppadapt.config.Config of the run
    record: RunRecord  # run.json
    run_dir: Path
    weights: Path  # the .pdparams / .safetensors that was loaded
    stage: str  # "pretrain" or "transfer"
    method: str  # the tuning method applied ("full" for a pretraining run)
    class_names: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def img_size(self) -> int:
        return int(self.config.model.img_size)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _adapter_only(path: Path) -> str:
    return (f"{path} is an adapter-only checkpoint (just the tuned tensors, no backbone); pass the run "
            "directory or its best / final checkpoint, which hold the whole model")


def resolve_checkpoint(checkpoint: str | Path, weights: str | None = None) -> tuple[Path, Path]:
    """``(run_dir, weights_file)`` of a run directory or of a ``.pdparams`` / ``.safetensors``
    inside one.

    For a directory, ``weights`` picks ``best`` or ``final``; ``None`` means best, or final
    when the run has no best (it never evaluated). A file must sit next to the ``run.json``
    of its run; ``weights`` must then be None. An adapter (folder or file) is refused with
    a line that says to pass its run instead.
    """
    if weights is not None and weights not in WEIGHTS:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path} (pass a run directory such as "
                              "output/<run>/ or its best.pdparams / final.pdparams)")
    if path.is_dir():
        run_dir = path
        if not (run_dir / RUN_RECORD).is_file():
            if (run_dir / CONFIG_FILE).is_file() or (run_dir / TENSORS_FILE).is_file():
                raise CheckpointError(_adapter_only(run_dir))
            raise CheckpointError(f"{run_dir} is not a run directory: it has no {RUN_RECORD} (pass the "
                                  "folder that train.py / transfer.py wrote, e.g. output/<run>/)")
        names = [weights] if weights else list(WEIGHTS)
        for name in names:
            found = find_weights(run_dir, name)
            if found is not None:
                return run_dir, found
        raise CheckpointError(f"run directory {run_dir} has no {' or '.join(f'{n}.pdparams' for n in names)}"
                              " (nor .safetensors; the run was interrupted before saving?)")
    if weights is not None:
        raise ConfigError(f"--weights {weights} applies to a run directory; {path} is already a file")
    if path.name in (TENSORS_FILE, CONFIG_FILE) or (path.parent.name == ADAPTER_DIR
                                                     and (path.parent / CONFIG_FILE).is_file()):
        raise CheckpointError(_adapter_only(path))
    if not (path.parent / RUN_RECORD).is_file():
        raise CheckpointError(f"no {RUN_RECORD} next to {path}: the model cannot be rebuilt without its run "
                              "record (keep the checkpoint in its run directory, or pass the directory)")
    return path.parent, path


def config_from_record(data: Any):
    """The :class:`~ppadapt.config.Config` recorded in run.json, validated; a record from
    another version of ppadapt fails with the offending key named."""
    try:
        cfg = config_from_dict(data, source="run.json")
        validate(cfg)
    except ConfigError as exc:
        raise CheckpointError(f"the run's recorded config cannot be rebuilt by this ppadapt ({exc})") from None
    return cfg


def build_run_model(cfg, record: RunRecord):
    """The network of a run, before its weights: ``(model, method name, stage)``."""
    stage = record.stage if record.stage is not None else "transfer"
    if stage not in ("pretrain", "transfer"):
        raise CheckpointError(f"run.json has an unknown stage {stage!r} (expected pretrain or transfer)")
    class_names = record.class_names
    if not isinstance(class_names, list) or not class_names:
        raise CheckpointError("run.json's class_names must be a non-empty list")
    model = build_model(cfg, len(class_names))
    if stage == "transfer":
        recorded = record.method
        method = transfer_method(cfg)
        if recorded is not None and recorded != method:
            raise CheckpointError(f"run.json says method {recorded!r} but its config gives {method!r}")
        try:
            apply_transfer_method(model, cfg)
        except ValueError as exc:
            raise CheckpointError(f"cannot apply the run's method {method!r}: {exc}") from None
    else:
        method = "full"
    return model, method, stage


def load_run(checkpoint: str | Path, weights: str | None = None) -> LoadedRun:
    """Rebuild the model of a run directory or checkpoint file and load its weights strictly.

    The model comes back in eval mode (dropout off) with every parameter's
    ``stop_gradient`` set, so no autograd state or training-only path is used.
    """
    run_dir, weights_file = resolve_checkpoint(checkpoint, weights)
    record = read_record(run_dir, require=REQUIRED)
    cfg = config_from_record(record.config)
    model, method, stage = build_run_model(cfg, record)
    state = load_state_dict(str(weights_file))
    if META_KEY in state:
        raise CheckpointError(_adapter_only(weights_file))
    try:
        load_weights(model, state)
    except CheckpointError as exc:
        raise CheckpointError(f"{weights_file} does not match the model rebuilt from {run_dir / RUN_RECORD}: "
                              f"{exc}") from None
    model.eval()
    for param in model.parameters():
        param.stop_gradient = True
    mean, std = rgb_triple(record.mean, "mean"), rgb_triple(record.std, "std")
    return LoadedRun(model=model, config=cfg, record=record, run_dir=run_dir, weights=weights_file,
                     stage=stage, method=method, class_names=[str(c) for c in record.class_names],
                     mean=mean, std=std)


def rgb_triple(values: Any, what: str, prefix: str = "run.json's ") -> tuple[float, float, float]:
    """``values`` as three floats (a mean or std per RGB channel); one CheckpointError line
    ``{prefix}{what} must be 3 numbers ...`` otherwise."""
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3:
        raise CheckpointError(f"{prefix}{what} must be 3 numbers (one per RGB channel), got {values!r}")
    return out  # type: ignore[return-value]


def describe(run: LoadedRun) -> str:
    """One line: what was loaded."""
    return (f"loaded {run.weights} ({run.stage}, method {run.method}; "
            f"{describe_architecture(run.config.model.architecture())}; {run.num_classes} classes)")


__all__ = ["LoadedRun", "REQUIRED", "RUN_RECORD", "WEIGHTS", "build_run_model", "config_from_record", "describe",
           "load_run", "find_weights", "resolve_checkpoint"]
