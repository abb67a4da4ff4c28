"""Experiment configuration: typed sections, YAML files, ``-o key=value`` overrides.

A config file describes one protocol (model, AdaptFormer branch, pretraining
stage, transfer stage); ``train.py`` runs its ``pretrain`` section and
``transfer.py`` its ``transfer`` section, so both tools share the model.
Every key is checked: an unknown or mistyped key is an error that suggests the
closest valid one, never silently ignored.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from .errors import ConfigError
from .methods.adaptformer import AdaptFormerConfig
from .models.vit import ViTConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class AdapterSection(AdaptFormerConfig):
    """AdaptFormer options, plus whether the model has the branches at all."""

    enabled: bool = True

    def method_config(self) -> AdaptFormerConfig:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(AdaptFormerConfig)}
        return AdaptFormerConfig(**values).resolved()


@dataclass
class StageConfig:
    """Data and optimisation of one stage (pretraining or transfer)."""

    dataset: str = "cifar10"
    data_file: str | None = None
    data_dir: str | None = None
    classes: list[int] | None = None
    augment: bool = True
    num_workers: int = 0
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "warmup_epoch_cosine"  # warmup_epoch_cosine | warmup_step_cosine
    warmup_steps: int = 2000
    min_lr: float = 0.0
    log_freq: int = 10


@dataclass
class PretrainConfig(StageConfig):
    dataset: str = "cifar100"


@dataclass
class TransferConfig(StageConfig):
    freeze: bool = False
    pretrained: str | None = None  # None: the final checkpoint of this config's pretraining run
    resume_adapter: str | None = None  # an adapter.pdparams to start the method's tensors from


@dataclass
class MethodSection:
    """The tuning method of the transfer stage and its options (``-o method.rank=8``).

    Option names depend on the method, so they are checked against the method's
    own config in :func:`validate` rather than by this dataclass.
    """

    name: str = "full"
    options: dict = field(default_factory=dict)


@dataclass
class Config:
    model: ViTConfig = field(default_factory=ViTConfig)
    adapter: AdapterSection = field(default_factory=AdapterSection)
    method: MethodSection = field(default_factory=MethodSection)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    seed: int = 42
    output: str = "output"
    name: str = "tutorial"  # prefix of the run directories under ``output``

    def stage(self, which: str) -> StageConfig:
        return getattr(self, which)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


STAGES = ("pretrain", "transfer")
SCHEDULES = ("warmup_epoch_cosine", "warmup_step_cosine")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                stage: str | None = None) -> Config:
    """Read ``path`` (YAML) on top of the defaults, then apply ``key=value`` overrides.

    In an override, a stage key without a section (``lr=0.1``) applies to ``stage``.
    """
    cfg = Config()
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
        _merge(cfg, data, prefix="", source=str(path))
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value (e.g. -o transfer.epochs=3)")
        set_value(cfg, key.strip(), _parse_scalar(raw), stage=stage, source="-o")
    validate(cfg)
    return cfg


def set_value(cfg: Config, dotted: str, value: Any, *, stage: str | None = None, source: str = "") -> None:
    """Set one dotted key with type checking; a bare stage key goes to ``stage``."""
    parts = dotted.split(".")
    if len(parts) == 1 and stage and not hasattr(cfg, parts[0]):
        stage_keys = _field_names(cfg.stage(stage))
        if parts[0] in stage_keys:
            parts = [stage] + parts
        else:  # a mistyped bare stage key (-o epoch=3): suggest from both levels
            close = difflib.get_close_matches(parts[0], _field_names(cfg) + stage_keys, n=1, cutoff=0.6)
            if close:
                where = f"'{stage}.{close[0]}'" if close[0] in stage_keys else f"'{close[0]}'"
                raise ConfigError(f"{source + ': ' if source else ''}unknown config key '{parts[0]}'; "
                                  f"did you mean {where}?")
    if len(parts) == 2 and parts[0] == "method" and parts[1] not in ("name", "options"):
        cfg.method.options[parts[1]] = value
        return
    node = cfg
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(node) or part not in _field_names(node):
            _unknown(node, ".".join(parts[:i]), part, source)
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(node, part)):
                raise ConfigError(f"{dotted} is a section; set one of its keys, e.g. {dotted}."
                                  f"{next(iter(_field_names(getattr(node, part))))}=...")
            setattr(node, part, _coerce(value, _field_types(node)[part], ".".join(parts)))
        else:
            node = getattr(node, part)


def validate(cfg: Config) -> None:
    """Range checks that a type check cannot express."""
    for name in STAGES:
        st = cfg.stage(name)
        for key in ("epochs", "batch_size"):
            if getattr(st, key) <= 0:
                raise ConfigError(f"{name}.{key} must be positive, got {getattr(st, key)} (give a whole number "
                                  f">= 1: --{key.replace('_', '-')} N or -o {name}.{key}=N)")
        if not st.lr > 0:
            raise ConfigError(f"{name}.lr must be positive, got {st.lr} (give a number > 0, e.g. --lr 0.01 "
                              f"or -o {name}.lr=0.01)")
        for key in ("warmup_steps", "num_workers", "weight_decay", "min_lr", "momentum"):
            if getattr(st, key) < 0:
                raise ConfigError(f"{name}.{key} must not be negative, got {getattr(st, key)}")
        if st.schedule not in SCHEDULES:
            raise ConfigError(f"{name}.schedule must be one of {SCHEDULES}, got {st.schedule!r}")
    m = cfg.model
    for key in ("img_size", "patch_size", "embed_dim", "depth", "num_heads"):
        if getattr(m, key) <= 0:
            raise ConfigError(f"model.{key} must be positive, got {getattr(m, key)}")
    if m.embed_dim % m.num_heads:
        raise ConfigError(f"model.embed_dim ({m.embed_dim}) must be divisible by model.num_heads ({m.num_heads})")
    if m.patch_size > m.img_size:
        raise ConfigError(f"model.patch_size ({m.patch_size}) is larger than model.img_size ({m.img_size})")
    try:
        cfg.adapter.method_config()
        method_config(cfg)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def transfer_method(cfg: Config) -> str:
    """The transfer stage's method: ``transfer.freeze`` (``--freeze``) means AdaptFormer."""
    return "adaptformer" if cfg.transfer.freeze else cfg.method.name


def method_config(cfg: Config):
    """The checked options of the transfer method (ValueError on a bad one)."""
    from .methods import get_method

    name = transfer_method(cfg)
    if cfg.transfer.freeze and cfg.method.name not in ("full", "adaptformer"):
        raise ValueError(f"--freeze means method 'adaptformer' but method '{cfg.method.name}' is set; use one")
    if name == "adaptformer" and cfg.method.options:
        raise ValueError("AdaptFormer's options live in the adapter section (e.g. -o adapter.bottleneck=8), "
                         "not in method")
    cfg_obj = get_method(name).make_config(**cfg.method.options)
    validated = getattr(cfg_obj, "validated", None)
    return validated() if callable(validated) else cfg_obj


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def config_from_dict(data: Any, source: str = "config") -> Config:
    """A :class:`Config` from ``Config.to_dict()`` output (run.json's or a resume
    checkpoint's ``config``), every key checked as a YAML file's is; not validated.

    ``method.options`` is free-form here (the method checks it in :func:`validate`).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: config must be a mapping, got {type(data).__name__}")
    data = copy.deepcopy(data)  # the Config must not share lists with the caller's dict
    method = data.pop("method", None) or {}
    if not isinstance(method, dict):
        raise ConfigError(f"{source}: method must be a mapping, got {method!r}")
    cfg = Config()
    _merge(cfg, data, prefix="", source=source)
    cfg.method = MethodSection(name=str(method.get("name", "full")), options=dict(method.get("options") or {}))
    return cfg


# --- internals -------------------------------------------------------------

def _merge(node: Any, data: dict, prefix: str, source: str) -> None:
    for key, value in data.items():
        key = str(key)
        dotted = f"{prefix}{key}"
        if isinstance(node, MethodSection) and key not in ("name", "options"):
            node.options[key] = value
            continue
        if key not in _field_names(node):
            _unknown(node, prefix.rstrip("."), key, source)
        current = getattr(node, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {dotted} must be a section (mapping), got {value!r}")
            _merge(current, value, f"{dotted}.", source)
        else:
            setattr(node, key, _coerce(value, _field_types(node)[key], dotted))


def _field_names(node: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(node)]


def _field_types(node: Any) -> dict:
    return typing.get_type_hints(type(node))


def _unknown(node: Any, section: str, key: str, source: str) -> None:
    names = _field_names(node) if dataclasses.is_dataclass(node) else []
    where = f"in section '{section}'" if section else "at top level"
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(names)}"
    origin = f"{source}: " if source else ""
    raise ConfigError(f"{origin}unknown config key '{key}' {where}; {hint}")


def _parse_scalar(raw: str) -> Any:
    raw = raw.strip()
    try:
        return yaml.safe_load(raw) if raw else None
    except yaml.YAMLError:
        return raw


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field's type; accept ints for floats and '1e-4' strings."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    kind = getattr(annotation, "__name__", str(annotation))
    example = {int: "a whole number, e.g. 10", float: "a number, e.g. 0.01", bool: "true or false",
               str: "a text value"}.get(annotation)
    raise ConfigError(f"{key} must be {kind}, got {value!r}" + (f" (give {example})" if example else ""))
