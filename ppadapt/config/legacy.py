"""Configs of an older ppadapt, read as the current form with one note.

An older ppadapt kept one method's options in a section of their own (the method
declares it: ``Tuner.legacy_section``), with ``enabled`` (default true) saying whether
the backbone carried that method's modules. On reading a YAML file, ``-o`` overrides or a
config dict (run.json, resume checkpoints) in that form, the section's keys are mapped:

* ``enabled`` true (or not given): the model carries the method with those options,
  ``model.carry.<method>`` (on top of any it already had);
* ``enabled`` false: the model does not carry it; its options (those it carried before
  included) become the ``method.*`` options when the transfer method is that method
  (``--method`` or its flag), and are unused otherwise.

A file or dict in the older form also predates the geometry check: if its own patch size
does not divide its image size, ``model.drop_border`` is set, so it trains as before.
Each load issues one :class:`~ppadapt.errors.LegacyConfigNote` saying how it was read.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Iterator

from ..errors import ConfigError, LegacyConfigNote
from ..methods import legacy_owner, legacy_sections
from .schema import Config, coerce, field_types, unknown_key
from .tuning import build_options, hand_over, transfer_method

ENABLED = "enabled"


class LegacyReader:
    """Collects the older-form keys of one load, then maps them (:meth:`resolve`)."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, Any]] = {}  # section -> key -> value, in the order read
        self.sources: list[str] = []
        self.old_form = False  # a whole file or dict in the older form (not just -o keys)
        self.border = False  # its geometry kept by setting model.drop_border

    @staticmethod
    def is_legacy_key(dotted: str) -> bool:
        return dotted.split(".")[0] in legacy_sections()

    def claims(self, dotted: str) -> bool:
        return self.is_legacy_key(dotted)

    def take(self, data: dict, source: str) -> dict:
        """``data`` without its older-form sections, which are collected."""
        data = dict(data)
        for section in legacy_sections():
            if section not in data:
                continue
            values = data.pop(section)
            self.old_form = True
            if values is None:
                values = {}
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: {section} must be a section (mapping), got {values!r}")
            for key, value in values.items():
                self._set(section, str(key), value, source)
            self._source(source)
        return data

    def keep_geometry(self, cfg: Config, data: dict) -> None:
        """An older-form file or dict trains on its own patch grid as before (see the module)."""
        if self.old_form and "drop_border" not in (data.get("model") or {}):
            m = cfg.model
            if m.patch_size > 0 and m.img_size % m.patch_size:
                cfg.model.drop_border = self.border = True

    def set_key(self, dotted: str, value: Any, source: str) -> None:
        """One ``-o section.key=value`` of the older form."""
        section, _, key = dotted.partition(".")
        if not key:
            owner = legacy_owner(section)
            raise ConfigError(f"{section} is a section; set one of its keys, e.g. {section}."
                              f"{next(iter(owner.options()))}=...")
        if "." in key:
            raise unknown_key(self._keys(section), section, key, source)
        self._set(section, key, value, source)
        self._source(source)

    def _keys(self, section: str) -> list[str]:
        return [*legacy_owner(section).options(), ENABLED]

    def _set(self, section: str, key: str, value: Any, source: str) -> None:
        owner = legacy_owner(section)
        if key not in self._keys(section):
            raise unknown_key(self._keys(section), section, key, source)
        kind = bool if key == ENABLED else field_types(owner.config)[key]
        self.values.setdefault(section, {})[key] = coerce(value, kind, f"{section}.{key}")

    def _source(self, source: str) -> None:
        if source and source not in self.sources:
            self.sources.append(source)

    def resolve(self, cfg: Config) -> str | None:
        """Map the collected keys onto ``cfg`` (see the module); returns the note, or None."""
        read = []
        for section, values in self.values.items():
            owner = legacy_owner(section)
            name = owner.name
            options = {k: v for k, v in values.items() if k != ENABLED}
            before = cfg.model.carry.get(name) or {}
            build_options(owner, {**before, **options}, where=section)  # errors name the keys as written
            if values.get(ENABLED, True):
                cfg.model.carry[name] = {**before, **options}
                read.append(f"{section}.* as model.carry.{name}.* (the model carries {owner.modules})")
            else:
                carried = cfg.model.carry.pop(name, None)
                hand_over(cfg, {name: {**(carried or {}), **options}})
                if transfer_method(cfg) == name:
                    read.append(f"{section}.{ENABLED}: false as a model that carries no {name}, and the "
                                f"{section} options as method.* options of the transfer method {name}")
                else:
                    read.append(f"{section}.{ENABLED}: false as a model that carries no {name} (the "
                                f"{section} options are unused)")
        if self.border:
            m = cfg.model
            read.append(f"its {m.patch_size}-pixel patches on {m.img_size}-pixel images as model.drop_border: true")
        if not read:
            return None
        return (f"{' and '.join(self.sources) or 'config'}: older config form, read as the current one: "
                f"{'; '.join(read)}. Write it that way to drop this note")


def explicit_key_aliases(dotted: str) -> list[str]:
    """The current keys an older-form key (given on a command line) stands for."""
    section, _, key = dotted.partition(".")
    owner = legacy_owner(section)
    if owner is None:
        return [dotted]
    if not key or key == ENABLED:
        return [f"model.carry.{owner.name}" if key else "model.carry", "method"]
    return [f"model.carry.{owner.name}.{key}", f"method.{key}"]


@contextlib.contextmanager
def legacy_notes(show: Callable[[str], None]) -> Iterator[None]:
    """Route the notes of reading an older config form to ``show`` (e.g. a tool's log line);
    other warnings are issued as usual."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LegacyConfigNote)
        yield
    for w in caught:
        if issubclass(w.category, LegacyConfigNote):
            show(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
