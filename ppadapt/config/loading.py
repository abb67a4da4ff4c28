"""Reading a config: YAML files, ``-o key=value`` overrides, and config dicts (run.json, checkpoints).

Every key is checked: an unknown or mistyped key is an error that suggests the
closest valid one, never silently ignored. A config of an older ppadapt is read as
the current form, with one note (:mod:`.legacy`).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from ..errors import ConfigError, LegacyConfigNote
from .legacy import LegacyReader
from .recipes import KEY as RECIPES_KEY, apply_recipe, checked_recipes
from .schema import (SCHEDULE_RULES, STAGES, Config, MethodSection, ModelSection, TransferConfig, coerce,
                     field_names, field_types, parse_scalar, unknown_key)
from .tuning import transfer_method
from .validation import validate


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                stage: str | None = None, preset: Iterable[tuple[str, Any]] = (),
                then: Callable[[Config], Iterable[str] | None] | None = None) -> Config:
    """Read ``path`` (YAML) on top of the defaults, then apply ``preset`` (``(key, value)``
    pairs, e.g. from command-line flags), the ``key=value`` overrides and ``then(cfg)`` (the
    command lines' other flags; it returns the dotted keys it set), then validate.

    In an override, a stage key without a section (``lr=0.1``) applies to ``stage``.
    The transfer method's recipe (``transfer.by_method``, :mod:`.recipes`) is applied after
    the overrides, to the transfer keys they do not set, and before ``then``.
    Keys of an older config form (``adapter.*``) are read as the current ones, with one
    :class:`~ppadapt.errors.LegacyConfigNote` per load, issued once the config is valid.
    A schedule that is a rule (``schedule: bit_hyperrule``) decides some stage keys itself:
    setting one of them in the same place as the rule or later is an error (see
    :func:`check_rule_keys`).
    """
    cfg = Config()
    legacy = LegacyReader()
    given: dict[str, tuple[int, str]] = {}  # dotted key -> (which source set it last, in order; its name)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path} (see configs/ for the shipped ones)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" line {where.line + 1}" if where else ""
            raise ConfigError(f"config file {path} is not valid YAML{line}: fix its syntax") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must be a mapping of sections, got {type(data).__name__}")
        cfg.name = path.stem
        data = legacy.take(data, source=str(path))
        _merge(cfg, data, prefix="", source=str(path))
        legacy.keep_geometry(cfg, data)
        given.update(dict.fromkeys(_dotted(data), (0, str(path))))
    for key, value in preset:
        set_value(cfg, key, value, stage=stage)
        given[_stage_key(cfg, key, stage)] = (1, "the command line")
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value (e.g. -o transfer.epochs=3)")
        key = key.strip()
        if legacy.claims(key):
            legacy.set_key(key, parse_scalar(raw), source="-o")
        else:
            set_value(cfg, key, parse_scalar(raw), stage=stage, source="-o")
            given[_stage_key(cfg, key, stage)] = (2, "-o")
    note = legacy.resolve(cfg)
    method = transfer_method(cfg)
    for key in apply_recipe(cfg, method, [k for k, (rank, _) in given.items() if rank == 2]):
        given[f"transfer.{key}"] = (0, f"{RECIPES_KEY}.{method}")  # part of the file's transfer section
    if then is not None:
        for key in then(cfg) or ():
            given[_stage_key(cfg, key, stage)] = (3, "the command line")
    validate(cfg)
    check_rule_keys(cfg, given)
    if note:
        warnings.warn(note, LegacyConfigNote, stacklevel=2)
    return cfg


def set_value(cfg: Config, dotted: str, value: Any, *, stage: str | None = None, source: str = "") -> None:
    """Set one dotted key with type checking; a bare stage key goes to ``stage``.

    ``model.carry.NAME.OPTION`` sets one option of a carried method (``model.carry.NAME``
    a mapping of them, null: not carried; ``model.carry`` the whole mapping).
    """
    parts = dotted.split(".")
    if len(parts) == 1 and stage and not hasattr(cfg, parts[0]):
        stage_keys = field_names(cfg.stage(stage))
        if parts[0] in stage_keys:
            parts = [stage] + parts
        else:  # a mistyped bare stage key (-o epoch=3): suggest from both levels
            close = difflib.get_close_matches(parts[0], field_names(cfg) + stage_keys, n=1, cutoff=0.6)
            if close:
                where = f"'{stage}.{close[0]}'" if close[0] in stage_keys else f"'{close[0]}'"
                raise ConfigError(f"{source + ': ' if source else ''}unknown config key '{parts[0]}'; "
                                  f"did you mean {where}?")
    if LegacyReader.is_legacy_key(".".join(parts)):
        legacy = LegacyReader()
        legacy.set_key(".".join(parts), value, source=source)
        note = legacy.resolve(cfg)
        if note:
            warnings.warn(note, LegacyConfigNote, stacklevel=2)
        return
    if len(parts) == 2 and parts[0] == "method" and parts[1] not in ("name", "options"):
        cfg.method.options[parts[1]] = value
        return
    if len(parts) > 2 and parts[:2] == ["model", "carry"]:
        _set_carried(cfg, parts[2:], value, ".".join(parts))
        return
    if len(parts) > 2 and parts[:2] == ["transfer", "by_method"]:
        _set_recipe(cfg, parts[2:], value, ".".join(parts))
        return
    node = cfg
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(node) or part not in field_names(node):
            names = field_names(node) if dataclasses.is_dataclass(node) else []
            raise unknown_key(names, ".".join(parts[:i]), part, source)
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(node, part)):
                raise ConfigError(f"{dotted} is a section; set one of its keys, e.g. {dotted}."
                                  f"{next(iter(field_names(getattr(node, part))))}=...")
            value = coerce(value, field_types(node)[part], ".".join(parts))
            if isinstance(node, ModelSection) and part == "carry":
                value = _carry_mapping(value, ".".join(parts))
            if isinstance(node, TransferConfig) and part == "by_method":
                value = checked_recipes(value)
            setattr(node, part, value)
        else:
            node = getattr(node, part)


def check_rule_keys(cfg: Config, given: dict[str, tuple[int, str]]) -> None:
    """A stage whose schedule is a rule (``SCHEDULE_RULES``) gets those keys from the rule at
    run time, so one also set where the rule is named, or by a later source, would be silently
    replaced: one ConfigError line. ``given``: dotted key -> (the source that set it, numbered
    in the order the sources apply: file, flags, ``-o``, flags; its name). A key set by an
    earlier source than the rule (a file's ``epochs`` under ``-o schedule=bit_hyperrule``) is
    replaced by the rule: switching to the rule asks for that."""
    for stage in STAGES:
        rule = cfg.stage(stage).schedule
        if rule not in SCHEDULE_RULES:
            continue
        where = given.get(f"{stage}.schedule", (-1, ""))[0]
        for key in SCHEDULE_RULES[rule]:
            rank, source = given.get(f"{stage}.{key}", (-2, ""))
            if rank >= where:
                raise ConfigError(
                    f"{stage}.schedule {rule} sets {stage}.{key} from the size of the training set, but "
                    f"{source} sets it too: drop {stage}.{key} there, or set the schedule yourself "
                    f"(-o {stage}.schedule=step_decay with epochs, warmup_steps, decay_at and mixup_alpha)")


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def config_from_dict(data: Any, source: str = "config") -> Config:
    """A :class:`Config` from ``Config.to_dict()`` output (run.json's or a resume
    checkpoint's ``config``), every key checked as a YAML file's is; not validated.

    ``method.options`` is free-form here (the method checks it in :func:`validate`).
    The dict of an older ppadapt (an ``adapter`` section) is read as the current form,
    with one :class:`~ppadapt.errors.LegacyConfigNote`.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: config must be a mapping, got {type(data).__name__}")
    data = copy.deepcopy(data)  # the Config must not share lists with the caller's dict
    method = data.pop("method", None) or {}
    if not isinstance(method, dict):
        raise ConfigError(f"{source}: method must be a mapping, got {method!r}")
    cfg = Config()
    legacy = LegacyReader()
    data = legacy.take(data, source=source)
    _merge(cfg, data, prefix="", source=source)
    legacy.keep_geometry(cfg, data)
    cfg.method = MethodSection(name=str(method.get("name", "full")), options=dict(method.get("options") or {}))
    note = legacy.resolve(cfg)
    if note:
        warnings.warn(note, LegacyConfigNote, stacklevel=2)
    return cfg


# --- internals -------------------------------------------------------------

def _merge(node: Any, data: dict, prefix: str, source: str) -> None:
    for key, value in data.items():
        key = str(key)
        dotted = f"{prefix}{key}"
        if isinstance(node, MethodSection) and key not in ("name", "options"):
            node.options[key] = value
            continue
        if key not in field_names(node):
            raise unknown_key(field_names(node), prefix.rstrip("."), key, source)
        current = getattr(node, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {dotted} must be a section (mapping), got {value!r}")
            _merge(current, value, f"{dotted}.", source)
        else:
            value = coerce(value, field_types(node)[key], dotted)
            if isinstance(node, ModelSection) and key == "carry":
                value = _carry_mapping(value, dotted)
            if isinstance(node, TransferConfig) and key == "by_method":
                value = checked_recipes(value)
            setattr(node, key, value)


def _dotted(data: dict) -> list[str]:
    """The dotted keys a config mapping sets: ``section.key`` for each key of a section."""
    return [f"{k}.{sub}" if isinstance(v, dict) else str(k) for k, v in data.items()
            for sub in (v if isinstance(v, dict) else [None])]


def _stage_key(cfg: Config, key: str, stage: str | None) -> str:
    """``key`` as a dotted key: a bare stage key (``epochs``) is ``stage``'s, as set_value reads it."""
    if "." not in key and stage and not hasattr(cfg, key) and key in field_names(cfg.stage(stage)):
        return f"{stage}.{key}"
    return key


def _carry_mapping(value: dict, key: str) -> dict:
    """``model.carry`` as ``{name: {option: value}}``; a null entry is not carried."""
    out = {}
    for name, options in value.items():
        if options is None:
            continue
        if not isinstance(options, dict):
            raise ConfigError(f"{key}.{name} must be a mapping of the method's options (e.g. {{}} for its "
                              f"defaults), got {options!r}")
        out[str(name)] = dict(options)
    return out


def _set_carried(cfg: Config, rest: list[str], value: Any, dotted: str) -> None:
    carry = cfg.model.carry
    name = rest[0]
    if len(rest) == 1:  # model.carry.NAME: its options (a mapping), or null for none
        carry.pop(name, None)
        carry.update(_carry_mapping({name: value}, "model.carry"))
    elif len(rest) == 2:  # model.carry.NAME.OPTION
        carry.setdefault(name, {})[rest[1]] = value
    else:
        raise ConfigError(f"{dotted}: set one option of a carried method, e.g. model.carry.{name}.{rest[1]}=...")


def _set_recipe(cfg: Config, rest: list[str], value: Any, dotted: str) -> None:
    """``transfer.by_method.NAME`` (a mapping, null: none) or ``transfer.by_method.NAME.KEY``."""
    recipes = dict(cfg.transfer.by_method)
    name = rest[0]
    if len(rest) == 1:
        recipes[name] = value
    elif len(rest) == 2:
        recipes[name] = {**(recipes.get(name) or {}), rest[1]: value}
    else:
        raise ConfigError(f"{dotted}: set one key of a method's recipe, e.g. transfer.by_method.{name}.{rest[1]}=...")
    cfg.transfer.by_method = checked_recipes(recipes)


