"""The config's side of the tuning methods: which method the transfer stage uses and with
which options, which ones the model carries, and their checks. No method is named here:
what is special about one (its flag, its older config section) it declares itself."""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..methods import Tuner, get_method, method_of_flag
from ..models.vit import ViTConfig
from .schema import Config, ModelSection, coerce, field_types

FREEZE = "freeze"  # transfer.freeze / --freeze: the method that flag stands for


def transfer_method(cfg: Config) -> str:
    """The transfer stage's method: ``transfer.freeze`` (``--freeze``) means the method of that flag."""
    return method_of_flag(FREEZE).name if cfg.transfer.freeze else cfg.method.name


def _tuner(name: str, where: str) -> Tuner:
    try:
        return get_method(name)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}" if where else str(exc)) from None


def build_options(tuner: Tuner, options: dict, where: str | None = None) -> Any:
    """The checked config of ``tuner`` from option values; ConfigError on a bad one.

    ``where`` is the config key the options live under (``model.carry.NAME``, or an older
    section): errors name the option by it. Without it (``method.*``) they keep the
    method's own wording (``lora.rank must be ...``).
    """
    prefix = where or "method"
    unknown = sorted(set(options) - set(tuner.options()))
    if unknown:
        valid = ", ".join(tuner.options()) or "none"
        raise ConfigError(f"{where + ': ' if where else ''}method '{tuner.name}' has no option {unknown[0]!r} "
                          f"(its options: {valid})")
    if tuner.config is None:
        return None
    types = field_types(tuner.config)
    typed = {k: coerce(v, types[k], f"{prefix}.{k}") for k, v in options.items()}
    try:
        return tuner.check(tuner.make_config(**typed))
    except ValueError as exc:
        message, head = str(exc), f"{tuner.kind}."
        if where and message.startswith(head):
            message = f"{where}.{message[len(head):]}"
        elif where:
            message = f"{where}: {message}"
        raise ConfigError(message) from None


def carried_config(cfg: Config, name: str) -> Any:
    """The checked config of the method ``name`` that the model carries."""
    where = f"model.carry.{name}"
    tuner = _tuner(name, "model.carry")
    if not tuner.modules:
        raise ConfigError(f"{where}: {tuner.title} attaches no modules for a model to carry; drop it from "
                          "model.carry (choose it with --method)")
    return build_options(tuner, cfg.model.carry[name], where)


def method_config(cfg: Config) -> Any:
    """The checked config of the transfer method: the carried modules' when the model
    carries it (its ``method.*`` options must then agree with them)."""
    name = transfer_method(cfg)
    if cfg.transfer.freeze and cfg.method.name not in ("full", name):
        raise ConfigError(f"--{FREEZE} means method '{name}' but method '{cfg.method.name}' is set; use one")
    tuner = _tuner(name, "")
    own = build_options(tuner, cfg.method.options)
    if name not in cfg.model.carry:
        return own
    carried = carried_config(cfg, name)
    if cfg.method.options:
        merged = build_options(tuner, {**cfg.model.carry[name], **cfg.method.options}, f"model.carry.{name}")
        for key, value in cfg.method.options.items():
            if getattr(merged, key) != getattr(carried, key):
                raise ConfigError(
                    f"method.{key}={value!r} disagrees with model.carry.{name}.{key}={getattr(carried, key)!r}: "
                    f"the model carries {tuner.modules} from pretraining and the transfer reuses them; change "
                    f"model.carry.{name}.{key}, or drop method.{key}")
    return carried


def check_methods(cfg: Config) -> None:
    """Every carried method and the transfer method with their options (ConfigError)."""
    for name in cfg.model.carry:
        carried_config(cfg, name)
    method_config(cfg)


def hand_over(cfg: Config, carried: dict[str, dict]) -> None:
    """Once the model no longer carries ``carried``: if the transfer method is one of them,
    its options there become ``method.*`` options (those already set win)."""
    name = transfer_method(cfg)
    if name in carried:
        cfg.method.options = {**carried[name], **cfg.method.options}


def set_backbone(cfg: Config, arch: ViTConfig, **changes: Any) -> None:
    """Make the model a plain ViT of architecture ``arch`` (a PaddleClas backbone): it carries
    no method; the transfer method keeps the options it had as a carried one."""
    carried = cfg.model.carry
    cfg.model = ModelSection.plain(arch, **changes)
    hand_over(cfg, carried)

