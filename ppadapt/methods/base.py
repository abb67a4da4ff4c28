"""The tuner seam: what a tuning method declares, and what is done the same way for all.

A method is a :class:`Tuner` (one instance per method name, in :mod:`.registry`). It
declares:

* ``config``: its options dataclass (``None``: no options), and ``fixed``, the options
  its name pins (``vpt-deep``: ``deep=True``); :meth:`Tuner.check` validates a config;
* :meth:`Tuner.targets`: the sublayers it targets, as ``(path, layer)`` pairs;
* :meth:`Tuner.module_path`, :meth:`Tuner.create` and :meth:`Tuner.wire`: where the module
  it attaches for one target goes, the module itself, and the hooks that wire it in;
* :meth:`Tuner.owns`: which parameters it trains, a predicate on parameter names;
* :meth:`Tuner.fold`: how one of its modules merges into its target (mergeable methods);
* :meth:`Tuner.probe`: scalars that say whether its modules do anything yet (optional; the
  training stage logs them once per epoch as ``adapt/<method>/<name>``);
* ``suffix`` (its run-folder suffix), ``summary``, ``title`` and ``modules`` (words for
  messages), and optionally ``alias`` (a command-line flag that means it) and
  ``legacy_section`` (a config section of an older ppadapt that held its options).

Written once here: injection (:meth:`Tuner.apply`: parent lookup, the one "already
applied" check, the record), taking a method's modules off a model and putting them back
(:meth:`Tuner.detach` / :meth:`Tuner.attach`: many tasks on one backbone), trainability
(:meth:`Tuner.mark_trainable`: head always trains), the record of applied methods and
their options on the model (:func:`applied_methods`, one attribute), the metadata of
adapter files (:func:`adapter_file_meta`), the parameters methods added
(:func:`added_parameter_names`) and the merge loop (:attr:`Tuner.merge`).

Every module is attached beside the backbone's layers and wired in with forward hooks,
so no backbone parameter is renamed and a plain ViT checkpoint still loads.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import paddle
import paddle.nn as nn

from .trainable import set_trainable

RECORD = "applied_methods"  # the model attribute: {method name: its options}, in the order applied
_TUNER = "_ppadapt_tuner"  # on an attached module: the kind of the method that attached it
_TARGET = "_ppadapt_target"  # ... the path of the layer it is wired to
_HOOKS = "_ppadapt_hooks"  # ... the hook handles that wire it in

_KINDS: dict[str, str] = {}  # method name -> kind, for every tuner made


class Tuner:
    """One tuning method. Subclasses set the class attributes and override the hooks."""

    name: str = ""
    summary: str = ""
    title: str = ""  # in messages: "LoRA is already applied to this model"
    modules: str = ""  # what it attaches, in words ("LoRA updates"); "" when it attaches nothing
    config: type | None = None
    fixed: dict = {}
    kind: str = ""  # methods of one kind exclude each other (vpt-shallow and vpt-deep); default: the name
    suffix: str = ""  # run-folder suffix; default "_<name>"
    alias: str | None = None  # a command-line flag that means this method (``--freeze``)
    legacy_section: str | None = None  # the section of an older config format that held its options

    def __init__(self) -> None:
        self.kind = self.kind or self.name
        self.suffix = self.suffix or f"_{self.name}"
        self.title = self.title or self.name
        _KINDS[self.name] = self.kind

    def __repr__(self) -> str:
        return f"<method {self.name}>"

    # --- declared by each method ---------------------------------------------------------

    def check(self, cfg: Any) -> Any:
        """The validated config (``ValueError`` on a bad option)."""
        validated = getattr(cfg, "validated", None)
        return validated() if callable(validated) else cfg

    def check_model(self, model: nn.Layer, cfg: Any) -> None:
        """``ValueError`` if the method cannot apply to ``model`` (before anything is attached)."""

    def targets(self, model: nn.Layer, cfg: Any) -> list[tuple[str, nn.Layer]]:
        """The sublayers the method attaches to, as ``(path, layer)``; ``[]``: it attaches nothing."""
        return []

    def module_path(self, target: str) -> str:
        """Where the module of the target ``target`` is registered (a dotted path)."""
        raise NotImplementedError

    def create(self, model: nn.Layer, target: str, layer: nn.Layer, cfg: Any) -> nn.Layer:
        """The module for one target; its parameters are created here, target after target."""
        raise NotImplementedError

    def wire(self, model: nn.Layer, target: str, layer: nn.Layer, module: nn.Layer, cfg: Any) -> list:
        """Register the forward hooks that wire ``module`` in; returns their handles."""
        raise NotImplementedError

    def owns(self, name: str) -> bool:
        """Whether the parameter ``name`` is the method's (trains); the head is not asked."""
        return False

    def probe(self, model: nn.Layer, images: paddle.Tensor) -> dict[str, float]:
        """Named scalars measured on ``images`` (a fixed batch; ``model`` in eval mode, no
        gradient): the method's own answer to "are my modules doing anything yet?", which
        a weight's relative change cannot give for a module that starts at zero. Default:
        none. Must not draw random numbers or change any state."""
        return {}

    # Mergeable methods define ``fold(model, target, layer, module)``: fold the module's
    # effect into ``layer`` (the merge loop then removes the module and its hooks).
    fold: Callable | None = None

    def check_fold(self, model: nn.Layer, target: str, layer: nn.Layer, module: nn.Layer) -> None:
        """``ValueError`` if ``module`` cannot fold into ``layer``; asked of every module before
        any is folded, so a merge that cannot finish changes nothing."""

    # --- options -----------------------------------------------------------------------------

    def options(self) -> dict:
        """The method's options and their defaults (pinned ones left out)."""
        if self.config is None:
            return {}
        return {f.name: f.default for f in dataclasses.fields(self.config) if f.name not in self.fixed}

    def make_config(self, **options: Any) -> Any:
        """The method's config from option values (unchecked); ``ValueError`` for an unknown name."""
        unknown = sorted(set(options) - set(self.options()))
        if unknown:
            valid = ", ".join(self.options()) or "none"
            raise ValueError(f"method '{self.name}' has no option {unknown[0]!r} (its options: {valid})")
        return self.config(**options, **self.fixed) if self.config else None

    def _checked(self, cfg: Any) -> Any:
        if self.config is None:
            return None
        cfg = self.config(**self.fixed) if cfg is None else cfg
        if not isinstance(cfg, self.config):
            raise ValueError(f"expected a {self.config.__name__}, got {type(cfg).__name__}")
        for key, value in self.fixed.items():
            if getattr(cfg, key) != value:
                raise ValueError(f"method '{self.name}' means {key}={value!r}, got {key}={getattr(cfg, key)!r}")
        return self.check(cfg)

    # --- injection, written once ---------------------------------------------------------

    def apply(self, model: nn.Layer, config: Any = None) -> list[nn.Layer]:
        """Attach the method to ``model`` in place; returns the attached modules.

        ``ValueError`` on a bad option, a model it cannot apply to, or if a method of its
        kind is already applied.
        """
        cfg = self._checked(config)
        done = [n for n in applied_methods(model) if _KINDS.get(n, n) == self.kind]
        if done:
            raise ValueError(f"{self.title} is already applied to this model")
        self.check_model(model, cfg)
        layers = dict(model.named_sublayers())
        places = []  # (target, its layer, the parent of the new module, the module's name there)
        for target, layer in self.targets(model, cfg):
            where = self.module_path(target)
            parent_path, _, child = where.rpartition(".")
            parent = layers[parent_path] if parent_path else model
            if hasattr(parent, child):
                raise ValueError(f"cannot apply {self.title}: the model already has a sublayer {where}")
            places.append((target, layer, parent, child))
        attached = []
        for target, layer, parent, child in places:
            module = self.create(model, target, layer, cfg)
            parent.add_sublayer(child, module)
            setattr(module, _TUNER, self.kind)
            setattr(module, _TARGET, target)
            setattr(module, _HOOKS, list(self.wire(model, target, layer, module, cfg)))
            attached.append(module)
        record = dict(applied_methods(model))
        record[self.name] = dataclasses.asdict(cfg) if cfg is not None else {}
        setattr(model, RECORD, record)
        return attached

    def apply_to(self, model: nn.Layer, **options: Any) -> Any:
        """Apply the method with these options; returns its checked config."""
        cfg = self._checked(self.make_config(**options)) if self.config else None
        self.apply(model, cfg)
        return cfg

    def is_applied(self, model: nn.Layer) -> bool:
        return self.name in applied_methods(model)

    # --- detaching and attaching again, written once -------------------------------------------

    def detach(self, model: nn.Layer, config: Any = None) -> "Detached":
        """Take the method's modules off ``model`` (hooks removed, sublayers and record entry
        dropped) and return them, weights untouched, so :meth:`attach` can put them back.

        Lets one backbone serve many tasks: each task keeps its own modules while another's
        are wired in. ``config``: the checked config they were applied with (their wiring
        needs it again). ``ValueError`` if the method is not applied.
        """
        if not self.is_applied(model):
            raise ValueError(f"{self.title} is not applied to this model")
        layers = dict(model.named_sublayers())
        places = []
        for path, module in [(p, m) for p, m in layers.items() if getattr(m, _TUNER, None) == self.kind]:
            for hook in getattr(module, _HOOKS):
                hook.remove()
            setattr(module, _HOOKS, [])
            parent_path, _, child = path.rpartition(".")
            parent = layers[parent_path] if parent_path else model
            target = getattr(module, _TARGET)
            places.append(Place(path, parent, child, layers[target] if target else model, module))
            delattr(parent, child)
        record = dict(applied_methods(model))
        options = record.pop(self.name)
        setattr(model, RECORD, record)
        return Detached(self, config, options, places)

    def attach(self, model: nn.Layer, detached: "Detached") -> None:
        """Put modules that :meth:`detach` took off ``model`` back, wired as before (their hooks
        run after the ones already there, as when they were first applied)."""
        if detached.tuner is not self:
            raise ValueError(f"these modules are {detached.tuner.title}'s, not {self.title}'s")
        if any(_KINDS.get(n, n) == self.kind for n in applied_methods(model)):
            raise ValueError(f"{self.title} is already applied to this model")
        for place in detached.places:
            place.parent.add_sublayer(place.child, place.module)
            setattr(place.module, _HOOKS, list(self.wire(model, getattr(place.module, _TARGET), place.target,
                                                         place.module, detached.config)))
        record = dict(applied_methods(model))
        record[self.name] = detached.options
        setattr(model, RECORD, record)

    # --- trainability, written once ------------------------------------------------------

    def is_trainable(self, name: str) -> bool:
        """The method's parameters and the classifier head train; nothing else."""
        return name.startswith("head.") or self.owns(name)

    def mark_trainable(self, model: nn.Layer) -> None:
        """Set ``stop_gradient`` of every parameter of ``model`` by :meth:`is_trainable`."""
        set_trainable(model, self.is_trainable)

    # --- merging, written once -----------------------------------------------------------

    @property
    def merge(self) -> Callable[[nn.Layer], None] | None:
        """The method's merge (``merge(model)``), or None if it cannot be merged."""
        return self._merge if self.fold is not None else None

    @paddle.no_grad()
    def _merge(self, model: nn.Layer) -> None:
        """Fold every module of the method into the layer it is wired to, then remove the
        modules and their hooks and the method's record: ``model`` is a plain ViT again."""
        names = [n for n in applied_methods(model) if _KINDS.get(n, n) == self.kind]
        if not names:
            raise ValueError(f"{self.title} is not applied to this model")
        layers = dict(model.named_sublayers())
        mine = [(path, m) for path, m in layers.items() if getattr(m, _TUNER, None) == self.kind]
        for path, module in mine:
            target = getattr(module, _TARGET)
            self.check_fold(model, target, layers[target] if target else model, module)
        for path, module in mine:
            target = getattr(module, _TARGET)
            self.fold(model, target, layers[target] if target else model, module)
            for hook in getattr(module, _HOOKS):
                hook.remove()
            parent_path, _, child = path.rpartition(".")
            delattr(layers[parent_path] if parent_path else model, child)
        record = {n: o for n, o in applied_methods(model).items() if n not in names}
        setattr(model, RECORD, record)


class Place(NamedTuple):
    """Where a detached module goes back: its dotted path, parent layer and name there, and
    the layer it is wired to."""

    path: str
    parent: nn.Layer
    child: str
    target: nn.Layer
    module: nn.Layer


@dataclass
class Detached:
    """A method's modules off their model (:meth:`Tuner.detach`), with what puts them back."""

    tuner: Tuner
    config: Any  # the checked config the modules were applied with
    options: dict  # the method's entry in the model's record
    places: list[Place]  # in the order applied

    @property
    def modules(self) -> list[nn.Layer]:
        return [place.module for place in self.places]

    def state(self) -> dict:
        """The modules' tensors by their names in the model (``blocks.0.attn.qkv_lora.lora_A_q``, ...)."""
        return {f"{place.path}.{name}": value for place in self.places
                for name, value in place.module.state_dict().items()}


def applied_methods(model: nn.Layer) -> dict[str, dict]:
    """The methods applied to ``model`` with their options, in the order applied."""
    return getattr(model, RECORD, None) or {}


def added_parameter_names(model: nn.Layer) -> set[str]:
    """Names of the parameters that methods attached to ``model`` (none of the backbone's)."""
    names = set()
    for path, module in model.named_sublayers():
        if getattr(module, _TUNER, None) is not None:
            names.update(f"{path}.{name}" for name, _ in module.named_parameters())
    return names


def parameter_owners(model: nn.Layer) -> dict[str, str]:
    """``{parameter name: name of the method whose attached module holds it}``, for the
    parameters methods attached (what a method owns in the backbone, BitFit's biases, is
    not here: see :meth:`Tuner.owns`)."""
    names = {_KINDS.get(n, n): n for n in applied_methods(model)}
    owners = {}
    for path, module in model.named_sublayers():
        kind = getattr(module, _TUNER, None)
        if kind is not None:
            owners.update({f"{path}.{name}": names.get(kind, kind) for name, _ in module.named_parameters()})
    return owners


def adapter_file_meta(model: nn.Layer, method: str) -> dict:
    """What an adapter file records of the method trained on ``model``: its name and options,
    and every method the model has (e.g. the modules it carries from pretraining)."""
    record = applied_methods(model)
    return {"method": method, "options": dict(record.get(method, {})), "methods": dict(record)}
