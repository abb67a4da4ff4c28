"""Adapter files: just the tensors a method trained (and the task's head), plus their config.

A tuned task is then a small folder on top of a shared backbone, as HF PEFT lays it out,
and that folder is what people pass around, so reading it must not run code from it:

``adapter/adapter_model.safetensors``
    the trained tensors by ppadapt/PaddleClas parameter name: the method's, the head's,
    and the head's buffers (a ``bn_linear`` head's running statistics); safetensors is
    raw bytes plus a JSON header, so loading unpickles nothing.
``adapter/adapter_config.json``
    ``format`` (``"ppadapt-adapter"``) and ``format_version``, ``ppadapt_version``;
    ``method``, its ``options`` and every applied method (``methods``: e.g. branches the
    backbone carries from pretraining); ``backbone``: the ViT geometry the tensors were
    trained on (:data:`GEOMETRY`), checked before loading; the task: ``head`` (its type),
    ``num_classes``, ``class_names``, ``mean``/``std`` and ``eval_resize`` (how its images
    were preprocessed); ``base_model`` (the backbone checkpoint the transfer started from,
    as given), ``model`` (the config's whole model section) and ``tensors`` (file name,
    count, SHA-256: a corrupt or mixed-up copy fails before it loads).

The folder is written as a whole (:func:`ppadapt.runs.checkpoint.atomic_write_dir`): an
interrupted save leaves the previous folder or the new one, never a mix. Older ppadapt
wrote ``adapter.pdparams``, a pickled state dict with the config as a uint8 tensor under
:data:`META_KEY`; it still loads, through the restricted unpickler, with what its run's
``run.json`` knows of the task (class names, normalisation) filled in.

:func:`read_adapter` is the one reader (folder, its safetensors file, or an older
``.pdparams``; a run folder finds its adapter): it returns ``(tensors, meta)``, ``meta``
being the config above (an older file: ``format`` :data:`LEGACY_FORMAT`, its own keys
``method``/``options``/``methods``/``model``, plus ``backbone`` from ``model`` and what
``run.json`` gives; keys nothing gives are absent). :func:`load_adapter` puts one onto a
model after :func:`check_adapter_fits`. Every problem is one CheckpointError line that
names the file and the fix.
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import paddle
import paddle.nn as nn

from ..errors import CheckpointError
from ..models.vit import FAMILY_OPTIONS, ViTConfig
from ..version import __version__
from .checkpoint import (atomic_write_dir, file_sha256, is_safetensors, json_default, load_state_dict,
                         read_safetensors_hashed, write_safetensors)
from .record import RUN_RECORD, read_record

ADAPTER_DIR = "adapter"  # the folder a transfer writes in its run folder
TENSORS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
FORMAT = "ppadapt-adapter"
FORMAT_VERSION = 1
LEGACY_FILE = "adapter.pdparams"  # what older ppadapt wrote
LEGACY_FORMAT = "ppadapt-adapter-pdparams"
META_KEY = "__ppadapt_adapter__"  # the config's entry in a LEGACY_FILE
# The backbone's geometry an adapter records; the ones in FIT must be equal for it to load
# (img_size may differ: the position embedding is the backbone's and is resampled).
GEOMETRY = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias",
            "epsilon")
# The ViT-family options are recorded only where they are not a plain ViT's (a plain backbone's
# adapter_config.json is as it always was), and a geometry that does not record one has the plain value.
FAMILY_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ViTConfig) if f.name in FAMILY_OPTIONS}
# A Swin's geometry also records its arch, stage depths and window (a ViT's leaves them out).
ARCH_DEFAULTS = {"arch": "vit", "depths": None, "window_size": None}
FIT = ("arch", "embed_dim", "depth", "depths", "window_size", "patch_size", "num_heads", "mlp_ratio", "qkv_bias",
       "in_chans", *FAMILY_OPTIONS)
# The words an error uses for each GEOMETRY key.
GEOMETRY_WORDS = {"embed_dim": "width", "depth": "depth", "patch_size": "patch", "img_size": "image size",
                  "num_heads": "heads", "mlp_ratio": "MLP ratio", "qkv_bias": "qkv bias",
                  "in_chans": "input channels", "epsilon": "LayerNorm epsilon",
                  "abs_pos_embed": "absolute position embedding", "rel_pos_bias": "relative position bias",
                  "layer_scale": "layer scale", "pre_norm": "ln_pre", "act": "activation", "pool": "pooling",
                  "fc_norm": "fc_norm", "output_dim": "output projection", "arch": "architecture",
                  "depths": "depths", "window_size": "window"}
_WORDS = {k: GEOMETRY_WORDS[k] for k in ("embed_dim", "depth", "patch_size")}
_SWIN_WORDS = {k: GEOMETRY_WORDS[k] for k in ("embed_dim", "depths", "window_size", "patch_size")}
_REQUIRED = {"method": str, "options": dict, "methods": dict, "backbone": dict}
_AGAIN = "copy the whole adapter folder again from where it was made"


def adapter_state(model: nn.Layer) -> dict:
    """The trainable tensors of ``model`` by parameter name, and the head's buffers (the
    running statistics of a ``bn_linear`` head: they train with it but are no parameters)."""
    state = {name: p for name, p in model.named_parameters() if not p.stop_gradient}
    params = {name for name, _ in model.named_parameters()}
    state.update({k: v for k, v in model.state_dict().items() if k.startswith("head.") and k not in params})
    return state


def _architecture(model_or_arch: Any) -> dict:
    """The ViT architecture of a model (its ``config``), a ViTConfig / model section, or a dict."""
    arch = getattr(model_or_arch, "config", model_or_arch)
    if dataclasses.is_dataclass(arch) and not isinstance(arch, type):
        return {f.name: getattr(arch, f.name) for f in dataclasses.fields(arch)}
    return dict(arch) if isinstance(arch, Mapping) else {}


def backbone_geometry(model_or_arch: Any) -> dict:
    """The :data:`GEOMETRY` of a model, ViTConfig / SwinConfig or model-section dict (keys it lacks
    are left out); a Swin's adds ``arch``, ``depths`` and ``window_size``, with ``num_heads`` per stage."""
    arch = _architecture(model_or_arch)
    if arch.get("depths") is not None:  # a SwinConfig, or a model section with arch: swin
        heads = arch.get("stage_heads") or arch.get("num_heads")
        shared = {k: arch[k] for k in GEOMETRY if k in arch and k not in ("depth", "num_heads")}
        return {**shared, "arch": "swin", "depths": list(arch["depths"]), "num_heads": list(heads),
                "window_size": arch["window_size"]}
    family = {k: arch[k] for k in FAMILY_OPTIONS if k in arch and arch[k] != FAMILY_DEFAULTS[k]}
    return {**{k: arch[k] for k in GEOMETRY if k in arch}, **family}


def adapter_config(model: nn.Layer, meta: Mapping[str, Any]) -> dict:
    """The ``adapter_config.json`` of ``model``'s adapter: ``meta`` (method, options, methods,
    the task's class names, ...) with the format, version and geometry that the model
    itself gives, in the documented key order (keys ``meta`` adds beyond those come last)."""
    if not isinstance(meta.get("method"), str):
        raise ValueError(f"an adapter's meta needs the method's name ('method'), got {meta.get('method')!r}")
    arch = _architecture(model)
    num_classes = meta.get("num_classes", getattr(model, "class_num", None))
    names = meta.get("class_names")
    if names is not None and num_classes is not None and len(names) != int(num_classes):
        raise ValueError(f"{len(names)} class names for a head of {num_classes} classes")
    computed = {"format": FORMAT, "format_version": FORMAT_VERSION, "ppadapt_version": __version__,
                "method": meta["method"], "options": dict(meta.get("options") or {}),
                "methods": dict(meta.get("methods") or {}),
                "backbone": backbone_geometry(arch) or dict(meta.get("backbone") or {}),
                "head": arch.get("head", meta.get("head")), "num_classes": num_classes}
    order = ("class_names", "mean", "std", "eval_resize", "base_model", "model")
    config = {**computed, **{k: meta[k] for k in order if k in meta}}
    config.update({k: v for k, v in meta.items() if k not in config and k != "tensors"})
    # through JSON once: tuples, numpy numbers and paths become what a reader gets back
    return json.loads(json.dumps(config, default=json_default))


def save_adapter(model: nn.Layer, path: str | Path, meta: Mapping[str, Any]) -> Path:
    """Write ``model``'s adapter as the folder ``path`` (``adapter_model.safetensors`` +
    ``adapter_config.json``, see the module doc), atomically; returns the folder."""
    folder = Path(path)
    if folder.suffix in (".pdparams", ".safetensors"):
        raise ValueError(f"an adapter is written as a folder ({TENSORS_FILE} + {CONFIG_FILE}); pass the "
                         f"folder's path, e.g. RUN/{ADAPTER_DIR}, not {folder.name}")
    tensors = adapter_state(model)
    config = adapter_config(model, meta)

    def write(tmp: str) -> None:
        write_safetensors(tensors, Path(tmp) / TENSORS_FILE, {"format": "paddle"})
        config["tensors"] = {"file": TENSORS_FILE, "count": len(tensors),
                             "sha256": file_sha256(Path(tmp) / TENSORS_FILE)}
        with open(Path(tmp) / CONFIG_FILE, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
            f.write("\n")

    atomic_write_dir(folder, write)
    return folder


def find_adapter(path: str | Path) -> Path:
    """The adapter ``path`` names: an adapter folder, its ``adapter_model.safetensors`` or
    ``adapter_config.json``, an older ``adapter.pdparams``, or a run folder (its
    ``adapter/``, else its ``adapter.pdparams``)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"adapter not found: {p} (pass the {ADAPTER_DIR}/ folder that transfer.py wrote in "
                              f"its run folder, its {TENSORS_FILE}, or an older {LEGACY_FILE})")
    if p.is_file():
        return p.parent if p.name == CONFIG_FILE else p
    if (p / TENSORS_FILE).exists() or (p / CONFIG_FILE).exists():
        return p
    if (p / ADAPTER_DIR).is_dir():
        return p / ADAPTER_DIR
    if (p / LEGACY_FILE).is_file():
        return p / LEGACY_FILE
    raise CheckpointError(f"{p} holds no adapter (no {TENSORS_FILE} + {CONFIG_FILE}, no {ADAPTER_DIR}/ folder, "
                          f"no {LEGACY_FILE}); pass the {ADAPTER_DIR}/ folder of a parameter-efficient transfer")


def read_adapter(path: str | Path) -> tuple[dict, dict]:
    """``(tensors, meta)`` of an adapter (see :func:`find_adapter` for what ``path`` may be):
    tensors by parameter name (paddle Tensors, in the file's dtypes) and the adapter's
    config (the module doc lists its keys). The safetensors format is read with no pickle at
    all; an older ``.pdparams`` through the restricted unpickler. CheckpointError if it is
    not a readable adapter."""
    p = find_adapter(path)
    if p.is_dir():
        return _read_folder(p, p / TENSORS_FILE)
    if is_safetensors(p):
        return _read_folder(p.parent, p)
    return _read_legacy(p)


def _read_config(config_path: Path) -> dict:
    """``adapter_config.json``, checked: a JSON object of this format with the keys a loader needs."""
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{config_path} is not text (not UTF-8 JSON): a corrupt copy; {_AGAIN}") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}): "
                              f"a corrupt or damaged copy; {_AGAIN}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} holds a JSON {type(config).__name__}, not an adapter config "
                              f"(an object); {_AGAIN}")
    if config.get("format") != FORMAT:
        if "peft_type" in config:
            raise CheckpointError(f"{config_path} is a Hugging Face PEFT adapter ({config['peft_type']}, for "
                                  "PyTorch models), not a ppadapt one; pass an adapter folder that ppadapt's "
                                  "transfer.py wrote")
        raise CheckpointError(f"{config_path} is not a ppadapt adapter config (format {config.get('format')!r}, "
                              f"expected {FORMAT!r}); pass an adapter folder that ppadapt's transfer.py wrote")
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{config_path} has no valid format_version (got {version!r}); {_AGAIN}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{config_path} is format version {version}, written by a newer ppadapt "
                              f"({config.get('ppadapt_version')}); this ppadapt {__version__} reads up to "
                              f"version {FORMAT_VERSION}: upgrade ppadapt")
    for key, kind in _REQUIRED.items():
        if not isinstance(config.get(key), kind):
            got = "missing" if key not in config else f"a {type(config[key]).__name__}"
            raise CheckpointError(f"{config_path}: '{key}' must be a {'string' if kind is str else 'JSON object'}"
                                  f" ({got}); a damaged or hand-edited copy; {_AGAIN}")
    return config


def _read_folder(folder: Path, tensors_path: Path) -> tuple[dict, dict]:
    config_path = folder / CONFIG_FILE
    if not tensors_path.is_file():
        raise CheckpointError(f"adapter folder {folder} has no {tensors_path.name} beside its {CONFIG_FILE}; "
                              f"{_AGAIN} (both files)")
    if not config_path.is_file():
        raise CheckpointError(f"{tensors_path} has no {CONFIG_FILE} beside it, which says what the tensors are "
                              f"for (method, backbone, classes); {_AGAIN} (both files). A full checkpoint of "
                              "weights goes to --pretrained or predict.py instead")
    config = _read_config(config_path)
    if tensors_path.stat().st_size == 0:
        raise CheckpointError(f"{tensors_path} is empty (0 bytes): an interrupted copy? {_AGAIN}")
    tensors, digest = read_safetensors_hashed(tensors_path, what="adapter", fix=_AGAIN)
    recorded = config.get("tensors")
    expected = recorded.get("sha256") if isinstance(recorded, dict) else None
    if expected and digest != expected:
        raise CheckpointError(f"{tensors_path} does not match its {CONFIG_FILE} (the SHA-256 recorded there "
                              f"differs): a corrupt copy, or files of two adapters mixed; {_AGAIN}")
    if not tensors:
        raise CheckpointError(f"{tensors_path} holds no tensors; {_AGAIN}")
    return tensors, config


def _read_legacy(path: Path) -> tuple[dict, dict]:
    """An older ``adapter.pdparams``: the restricted unpickler, then the meta it kept, then
    the task's facts from the ``run.json`` beside it where the file lacks them."""
    state = load_state_dict(str(path))
    if META_KEY not in state:
        raise CheckpointError(f"{path} is not an adapter file (no {META_KEY} entry); pass the {ADAPTER_DIR}/ "
                              f"folder that transfer.py wrote (or an older {LEGACY_FILE})")
    blob = state.pop(META_KEY)
    try:
        meta = json.loads(bytes(np.asarray(blob.numpy() if hasattr(blob, "numpy") else blob, dtype="uint8")))
    except (ValueError, TypeError):
        meta = None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its {META_KEY} entry is not the JSON object ppadapt wrote there: a corrupt "
                              f"file; {_AGAIN}")
    meta = {"format": LEGACY_FORMAT, "format_version": 0, **meta}
    if "backbone" not in meta and isinstance(meta.get("model"), dict):
        meta["backbone"] = backbone_geometry(meta["model"])
        meta.setdefault("head", meta["model"].get("head"))
    _fill_from_record(meta, path.parent)
    return state, meta


def _fill_from_record(meta: dict, run_dir: Path) -> None:
    """What an older adapter file lacks of its task, from its run's ``run.json`` if readable."""
    if not (run_dir / RUN_RECORD).is_file():
        return
    try:
        record = read_record(run_dir, require=())
    except (CheckpointError, OSError, ValueError):
        return
    if isinstance(record.class_names, list) and record.class_names:
        meta.setdefault("class_names", [str(c) for c in record.class_names])
        meta.setdefault("num_classes", len(record.class_names))
    for key in ("mean", "std"):
        value = getattr(record, key)
        if isinstance(value, list) and len(value) == 3:
            meta.setdefault(key, value)
    transfer = (record.config or {}).get("transfer") if isinstance(record.config, dict) else None
    if isinstance(transfer, dict):
        if "eval_resize" in transfer:
            meta.setdefault("eval_resize", transfer["eval_resize"])
        if "pretrained" in transfer:
            meta.setdefault("base_model", transfer["pretrained"])


def _family(geometry: Mapping[str, Any]) -> str:
    return "Swin Transformer" if geometry.get("arch") == "swin" else "ViT"


def _describe(geometry: Mapping[str, Any], extra: list[str]) -> str:
    """``"width 768, depth 12, patch 16"`` (a Swin's: ``"width 96, depths [2, 2, 6, 2], window 7,
    patch 4"``), with the ``extra`` keys' values."""
    names = _SWIN_WORDS if geometry.get("arch") == "swin" else _WORDS
    words = [f"{names[k]} {geometry.get(k, '?')}" for k in names]
    extra = [k for k in extra if k not in names and k != "arch"]
    defaults = {**FAMILY_DEFAULTS, **ARCH_DEFAULTS}
    return ", ".join(words + [f"{k} {geometry.get(k, defaults.get(k, '?'))}" for k in extra])


def geometry_differences(have: Mapping[str, Any], want: Mapping[str, Any],
                         keys: tuple[str, ...] = FIT) -> list[str]:
    """The ``keys`` on which two geometries (:func:`backbone_geometry`) disagree; a key one of
    them does not record is not compared, except a family option (BEiTv2's, CLIP's), which two
    recorded geometries leave out only at its plain-ViT value. ``layer_scale`` compares only
    whether there is one (its value is an init). The one test of "same backbone" for every caller."""
    recorded = "embed_dim" in have and "embed_dim" in want
    have = {**FAMILY_DEFAULTS, **ARCH_DEFAULTS, **have} if recorded else have
    want = {**FAMILY_DEFAULTS, **ARCH_DEFAULTS, **want} if recorded else want

    def same(key: str) -> bool:
        a, b = have[key], want[key]
        if key == "layer_scale":
            return (a is None) == (b is None)
        if key in ("mlp_ratio", "epsilon"):
            return float(a) == float(b)
        return list(a) == list(b) if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) else a == b
    return [k for k in keys if k in have and k in want and not same(k)]


def check_adapter_fits(meta: Mapping[str, Any], model_or_arch: Any, path: str | Path | None = None) -> None:
    """Raise one CheckpointError line if the adapter ``meta`` describes was trained on another
    backbone than ``model_or_arch`` (a model, ViTConfig or model-section dict): it names
    both geometries. An adapter that records no geometry passes (names and shapes are
    checked when it loads)."""
    have = meta.get("backbone")
    if not isinstance(have, Mapping) and isinstance(meta.get("model"), Mapping):
        have = backbone_geometry(meta["model"])
    if not isinstance(have, Mapping) or not have:
        return
    want = backbone_geometry(model_or_arch)
    differ = geometry_differences(have, want)
    if not differ:
        return
    extra = [k for k in differ if k not in _WORDS]
    name = f"adapter {path}" if path is not None else "the adapter"
    theirs, ours = _family(have), _family(want)
    this = f"has {_describe(want, extra)}" if theirs == ours else f"is a {ours} of {_describe(want, extra)}"
    raise CheckpointError(f"{name} was trained on a {theirs} of {_describe(have, extra)}; this backbone "
                          f"{this}: load it onto the backbone it was trained on (its "
                          f"{CONFIG_FILE} says which: backbone, base_model), or train an adapter for this one")


def load_adapter(model: nn.Layer, path: str | Path, method: str | None = None) -> dict:
    """Load an adapter onto ``model`` (the backbone with the same method applied, see
    :func:`read_adapter` for what ``path`` may be); returns its meta. Nothing is copied
    unless everything fits: method, backbone geometry, head size, every tensor's name and shape."""
    tensors, meta = read_adapter(path)
    if method is not None and meta.get("method") != method:
        raise CheckpointError(f"{path} holds a '{meta.get('method')}' adapter but the model uses method "
                              f"'{method}'; pass --method {meta.get('method')}")
    check_adapter_fits(meta, model, path)
    classes, own_classes = meta.get("num_classes"), getattr(model, "class_num", None)
    if isinstance(classes, int) and isinstance(own_classes, int) and classes != own_classes:
        raise CheckpointError(f"adapter {path} has a head for {classes} classes but the model has {own_classes}; "
                              "use it on a task with the classes it was trained on (its class_names)")
    own = model.state_dict()
    missing = sorted(k for k in tensors if k not in own)
    wrong = sorted(k for k in tensors if k in own and list(tensors[k].shape) != list(own[k].shape))
    if missing or wrong:
        bad = (missing + wrong)[:3]
        raise CheckpointError(f"adapter file {path} does not fit the model ({len(missing)} unknown and "
                              f"{len(wrong)} mis-shaped tensors, e.g. {', '.join(bad)}); use the same "
                              "config and method options it was trained with")
    values = {k: v if v.dtype == own[k].dtype else paddle.cast(v, own[k].dtype) for k, v in tensors.items()}
    with warnings.catch_warnings():  # Paddle warns once per backbone tensor, which an adapter never holds
        warnings.filterwarnings("ignore", message="Skip loading for")
        model.set_state_dict(values)
    return meta


__all__ = ["ADAPTER_DIR", "CONFIG_FILE", "FORMAT", "FORMAT_VERSION", "GEOMETRY", "GEOMETRY_WORDS", "LEGACY_FILE", "LEGACY_FORMAT",
           "META_KEY", "TENSORS_FILE", "adapter_config", "adapter_state", "backbone_geometry", "check_adapter_fits", "geometry_differences",
           "find_adapter", "load_adapter", "read_adapter", "save_adapter"]
