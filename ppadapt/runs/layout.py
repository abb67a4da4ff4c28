"""Where a run's files go: ``<output>/<config>_<stage>_<dataset>[_<method>]``, and which of
its checkpoint files is the one it wrote (``.pdparams`` or ``.safetensors``: ``save_format``)."""
from __future__ import annotations

from pathlib import Path

from ..config import Config, transfer_method
from ..errors import CheckpointError
from ..methods import get_method
from .checkpoint import SAFETENSORS
from .record import read_record

SUFFIXES = (".pdparams", SAFETENSORS)  # what a run's best/final checkpoint may be written as


def run_dir(cfg: Config, stage: str) -> Path:
    st = cfg.stage(stage)
    name = f"{cfg.name}_{stage}_{st.dataset}"
    if stage == "transfer":
        name += get_method(transfer_method(cfg)).suffix  # "_full", "_lora", ... (the method declares it)
    return Path(cfg.output) / name


def find_weights(folder: Path, name: str) -> Path | None:
    """``best`` or ``final`` of a run folder as written: the file its ``run.json`` lists, else
    whichever exists, the ``.pdparams`` first (a folder may keep a file of an earlier run in
    the other format); None when there is neither."""
    try:
        listed = read_record(folder).checkpoints
    except CheckpointError:
        listed = None
    recorded = listed.get(name) if isinstance(listed, dict) else None
    if isinstance(recorded, str) and Path(recorded).suffix in SUFFIXES and (folder / Path(recorded).name).is_file():
        return folder / Path(recorded).name
    return next((folder / f"{name}{s}" for s in SUFFIXES if (folder / f"{name}{s}").is_file()), None)


def default_pretrained(cfg: Config) -> Path:
    """Where ``train.py`` with the same config wrote its final checkpoint (``final.pdparams``, or
    ``final.safetensors`` with ``save_format: safetensors``)."""
    folder = run_dir(cfg, "pretrain")
    return find_weights(folder, "final") or folder / f"final.{cfg.save_format}"
