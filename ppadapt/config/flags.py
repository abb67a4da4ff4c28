"""Which config key each command-line flag of ``train.py`` / ``transfer.py`` sets: one table.

The tools set the keys from it (:func:`presets` before the ``-o`` overrides, which then
win; :func:`apply_flags` after them, winning), and ``--resume`` asks it which keys the
command line set (:func:`explicit_keys`).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any

from .legacy import LegacyReader, explicit_key_aliases
from .loading import set_value
from .schema import Config


@dataclass(frozen=True)
class Flag:
    dest: str  # the argparse destination (``--batch-size``: batch_size)
    key: str  # the config key it sets; ``{stage}`` is the tool's stage
    before: bool = False  # set before the -o overrides (they win), else after them (it wins)
    implies: tuple[str, Any] | None = None  # a key it also sets, unless a flag sets that one
    by_tool: bool = False  # the tool applies it (a whole section); here only for explicit_keys


FLAGS = (
    Flag("method", "method.name", before=True),
    Flag("freeze", "transfer.freeze", before=True),
    Flag("dataset", "{stage}.dataset"),
    Flag("data_file", "{stage}.data_file"),
    Flag("data_dir", "{stage}.data_dir", implies=("{stage}.dataset", "folder")),
    Flag("epochs", "{stage}.epochs"),
    Flag("batch_size", "{stage}.batch_size"),
    Flag("lr", "{stage}.lr"),
    Flag("output", "output"),
    Flag("seed", "seed"),
    Flag("device", "device"),
    Flag("pretrained", "transfer.pretrained"),  # paths: set as given, never parsed as YAML
    Flag("resume_adapter", "transfer.resume_adapter"),
    Flag("backbone", "model", by_tool=True),  # transfer.py --backbone: a PaddleClas architecture
)


def _given(args: argparse.Namespace, flag: Flag) -> Any:
    """The flag's value, or None when the command line does not give it."""
    value = getattr(args, flag.dest, None)
    return None if value is False else value


def _settings(args: argparse.Namespace, stage: str, before: bool) -> list[tuple[str, Any]]:
    out, keys = [], set()
    for flag in FLAGS:
        value = _given(args, flag)
        if value is None or flag.by_tool or flag.before != before:
            continue
        out.append((flag.key.format(stage=stage), value))
        keys.add(out[-1][0])
    for flag in FLAGS:
        if flag.implies and flag.before == before and _given(args, flag) is not None:
            key, value = flag.implies[0].format(stage=stage), flag.implies[1]
            if key not in keys:
                out.append((key, value))
    return out


def presets(args: argparse.Namespace, stage: str) -> list[tuple[str, Any]]:
    """``(key, value)`` of the flags set before the ``-o`` overrides (``--method``, ``--freeze``)."""
    return _settings(args, stage, before=True)


def apply_flags(cfg: Config, args: argparse.Namespace, stage: str) -> list[str]:
    """Set the keys of the flags that win over ``-o`` (``--epochs``, ``--output``, ...); returns
    those keys (a schedule rule checks that none of its keys is among them)."""
    settings = _settings(args, stage, before=False)
    for key, value in settings:
        set_value(cfg, key, value)
    return [key for key, _ in settings]


def explicit_keys(args: argparse.Namespace, stage: str) -> list[str]:
    """The config keys this command line sets (flags and ``-o``), as dotted names; a
    section name stands for all its keys. ``--resume`` checks them against the checkpoint's."""
    keys = [k for k, _ in _settings(args, stage, before=True) + _settings(args, stage, before=False)]
    keys += [flag.key for flag in FLAGS if flag.by_tool and _given(args, flag) is not None]
    top = {f.name for f in dataclasses.fields(Config)}
    stage_keys = {f.name for f in dataclasses.fields(Config().stage(stage))}
    for item in getattr(args, "override", None) or []:
        key = item.partition("=")[0].strip()
        if LegacyReader.is_legacy_key(key):
            keys += explicit_key_aliases(key)
        else:
            keys.append(f"{stage}.{key}" if key not in top and key in stage_keys else key)
    return keys
