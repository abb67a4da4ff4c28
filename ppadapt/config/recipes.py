"""Per-method recipes: ``transfer.by_method``, the stage keys one transfer method runs with.

Methods want different optimisation: small zero-initialised modules on a frozen backbone
learn with AdamW where full fine-tuning is well served by the tutorial's SGD. A config
can therefore give each method its own values of transfer-stage keys::

    transfer:
      lr: 0.1                  # every method
      by_method:
        lora: {optimizer: adamw, lr: 0.01, weight_decay: 0.05}

When the transfer method is ``lora`` those keys replace the stage's. They are
applied while the config is read, after the file and before the command line's flags, so
a key given with ``-o`` or a flag (``--lr``) still wins. The run's run.json then records
the values it trained with; a resumed run reads them from its checkpoint and never
re-applies a recipe.
"""
from __future__ import annotations

from typing import Any, Iterable

from ..errors import ConfigError
from ..methods import get_method
from .schema import Config, TransferConfig, coerce, field_names, field_types, unknown_key

KEY = "transfer.by_method"
# Keys that say which run this is, not how it optimises: a recipe cannot set them.
NOT_IN_RECIPE = ("by_method", "freeze", "pretrained", "resume_adapter")


def recipe_keys() -> list[str]:
    """The transfer-stage keys a recipe may set."""
    return [k for k in field_names(TransferConfig) if k not in NOT_IN_RECIPE]


def checked_recipes(recipes: Any) -> dict[str, dict]:
    """``transfer.by_method`` with every method known and every value typed (ConfigError)."""
    if not isinstance(recipes, dict):
        raise ConfigError(f"{KEY} must be a mapping {{method: {{key: value}}}}, got {recipes!r}")
    types, keys, out = field_types(TransferConfig), recipe_keys(), {}
    for name, values in recipes.items():
        try:
            get_method(str(name))
        except ValueError as exc:
            raise ConfigError(f"{KEY}: {exc}") from None
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{KEY}.{name} must be a mapping of transfer keys (e.g. {{lr: 0.01}}), got {values!r}")
        for key, value in values.items():
            if key in NOT_IN_RECIPE:
                raise ConfigError(f"{KEY}.{name}.{key}: a recipe sets how a method trains, not {key}; "
                                  f"set transfer.{key} instead")
            if key not in keys:
                raise unknown_key(keys, f"{KEY}.{name}", str(key), "")
        out[str(name)] = {k: coerce(v, types[k], f"{KEY}.{name}.{k}") for k, v in values.items()}
    return out


def apply_recipe(cfg: Config, method: str, explicit: Iterable[str] = ()) -> list[str]:
    """Set the transfer keys of ``method``'s recipe on ``cfg``, except those in ``explicit``
    (dotted ``transfer.KEY`` names the command line set). Returns the keys it set."""
    recipe = checked_recipes(cfg.transfer.by_method).get(method) or {}
    given = set(explicit)
    applied = []
    for key, value in recipe.items():
        if f"transfer.{key}" not in given:
            setattr(cfg.transfer, key, value)
            applied.append(key)
    return applied


def describe_recipe(cfg: Config, method: str) -> str | None:
    """One log line with the values ``method``'s recipe keys have in this run (the
    command line may have changed some), or None when the method has no recipe."""
    recipe = (cfg.transfer.by_method or {}).get(method)
    if not recipe:
        return None
    values = ", ".join(f"{k}={getattr(cfg.transfer, k)}" for k in recipe)
    return f"recipe of method {method} ({KEY}.{method}): {values}"
