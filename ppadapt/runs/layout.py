"""Where a run's files go: ``<output>/<config>_<stage>_<dataset>[_<method>]``."""
from __future__ import annotations

from pathlib import Path

from ..config import Config, transfer_method
from ..methods import get_method


def run_dir(cfg: Config, stage: str) -> Path:
    st = cfg.stage(stage)
    name = f"{cfg.name}_{stage}_{st.dataset}"
    if stage == "transfer":
        name += get_method(transfer_method(cfg)).suffix  # "_full", "_lora", ... (the method declares it)
    return Path(cfg.output) / name


def default_pretrained(cfg: Config) -> Path:
    """Where ``train.py`` with the same config writes its final checkpoint."""
    return run_dir(cfg, "pretrain") / "final.pdparams"
