"""PaddleClas pretrained ViT weights: where they come from, how they fit, how images look.

* **Where**: ``transfer.pretrained: paddleclas:NAME`` (what ``--backbone NAME`` sets
  when no ``--pretrained`` is given) means PaddleClas's ImageNet weights of the
  constructor ``NAME``, from the URL PaddleClas itself uses (``MODEL_URLS`` in
  ``ppcls/arch/backbone/model_zoo/vision_transformer.py``). A copy already in
  PaddleClas's cache (``~/.paddleclas/weights``) or Paddle's
  (``~/.cache/paddle/hapi/weights``) is used as is; otherwise the file is
  downloaded once into PaddleClas's cache. The download is one attempt with a
  timeout, written to a temporary file and renamed, and a failure is one
  :class:`CheckpointError` line that says to pass ``--pretrained PATH``; Paddle's own
  downloader would retry three times with a log line each, then fail with no cause.
* **Fit**: :func:`adapt_state_dict` is the checkpoint filter applied by
  :func:`load_pretrained`: a position embedding for another patch
  grid (other image size, or other patch size) is resampled bicubically over the
  grid with the class token kept, as timm's ``resample_abs_pos_embed``; a patch
  embedding kernel of another patch size is resampled by FlexiViT's pseudo-inverse
  resize, as timm's ``resample_patch_embed``; BEiTv2's relative position bias tables are
  resampled over their offset grid the same way. Everything else must match exactly
  (:func:`ppadapt.runs.checkpoint.load_weights` lists what does not), except two
  differences of PaddleClas's foundation ViTs (``MAE_vit_base_patch16``), whose
  constructor has no patch-embedding bias (loaded as a zero bias: the same function)
  and an image projection ``proj`` no classifier uses (ignored).
* **Images**: :func:`pretrained_normalization` gives the mean/std the weights were
  trained with: PaddleClas's ViTs use mean = std = 0.5 per channel, its DeiT and MAE
  ImageNet's mean/std (:func:`ppadapt.models.paddleclas_archs.paddleclas_normalization`);
  a checkpoint written by a ppadapt run uses what its ``run.json`` recorded.

The resampling matrices follow PyTorch's / Paddle's ``interpolate`` (half-pixel
centres, ``align_corners=False``, edge pixels replicated, cubic coefficient -0.75)
when enlarging, and PIL's antialiased filters (support widened by the shrink
factor, cubic coefficient -0.5, weights renormalised at the border) when
shrinking, as ``interpolate(..., antialias=True)`` does.
"""
from __future__ import annotations

import math
import os
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np

from ..errors import CheckpointError, ConfigError
from ..methods import added_parameter_names
from ..models.paddleclas_archs import paddleclas_normalization, paddleclas_weights_url
from ..models.swin import SwinConfig
from .checkpoint import load_state_dict, load_weights
from .layout import default_pretrained
from .record import read_record, record_path
from .resampling import resample_offset_grid, resize_matrix
from .swin_weights import SWIN, adapt_swin_state_dict, checkpoint_family

if TYPE_CHECKING:
    import paddle

    from ..config import Config

PADDLECLAS_MEAN = (0.5, 0.5, 0.5)
PADDLECLAS_STD = (0.5, 0.5, 0.5)
SCHEME = "paddleclas:"
WEIGHTS_HOME = Path("~/.paddleclas/weights")  # PaddleClas's cache (ppcls.utils.download.WEIGHTS_HOME)
PADDLE_WEIGHTS_HOME = Path("~/.cache/paddle/hapi/weights")  # Paddle's (paddle.utils.download.WEIGHTS_HOME)
TIMEOUT_S = 30.0  # per connection attempt and per read; one attempt only

POS_EMBED = "pos_embed"
PATCH_KERNEL = "patch_embed.proj.weight"
PATCH_BIAS = "patch_embed.proj.bias"
REL_POS_TABLE = "relative_position_bias_table"  # BEiTv2's, per block
REL_POS_INDEX = "relative_position_index"
FC_NORM = "fc_norm"  # model.fc_norm: a LayerNorm PaddleClas's checkpoints have only in their head
UNUSED_KEYS = ("proj",)  # PaddleClas's foundation ViTs: the CLIP-style image projection, unused by a classifier


# --- where the weights come from ----------------------------------------------------

def is_paddleclas_ref(value: str | None) -> bool:
    """Whether a ``transfer.pretrained`` value names PaddleClas's weights (``paddleclas:NAME``)."""
    return bool(value) and value.startswith(SCHEME)


def paddleclas_ref(name: str) -> str:
    """``"paddleclas:NAME"``, the ``transfer.pretrained`` value of PaddleClas's weights."""
    return SCHEME + name


def paddleclas_name(value: str) -> str:
    """The constructor name of a ``paddleclas:NAME`` value."""
    return value[len(SCHEME):]


def _cache_candidates(filename: str) -> list[Path]:
    return [(WEIGHTS_HOME / filename).expanduser(), (PADDLE_WEIGHTS_HOME / filename).expanduser()]


def cached_paddleclas_weights(name: str) -> Path | None:
    """A non-empty copy of ``name``'s weights in PaddleClas's or Paddle's cache, if any."""
    filename = paddleclas_weights_url(name).rsplit("/", 1)[-1]
    for path in _cache_candidates(filename):
        if path.is_file() and path.stat().st_size > 0:
            return path
    return None


def _fetch(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest`` in one attempt; raises on any failure.

    Written to a hidden temporary file in the same folder and renamed at the end,
    so an interrupted download never leaves a truncated ``dest`` in the cache.
    """
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            dest.parent.mkdir(parents=True, exist_ok=True)  # only once the server answered
            _copy(response, tmp)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def _copy(response, tmp: Path) -> None:
    """Stream an HTTP response to ``tmp``; a progress line on a terminal; checks the length."""
    with open(tmp, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0)
        done, shown = 0, -1
        while True:
            chunk = response.read(1 << 20)
            if not chunk:
                break
            out.write(chunk)
            done += len(chunk)
            if total and sys.stderr.isatty() and done * 20 // total != shown:
                shown = done * 20 // total
                print(f"\r  {done / 2**20:,.0f} of {total / 2**20:,.0f} MiB", end="", file=sys.stderr)
        if total and sys.stderr.isatty():
            print(file=sys.stderr)
    if total and done != total:
        raise OSError(f"connection closed after {done:,} of {total:,} bytes")


def paddleclas_weights(name: str, log: Callable[[str], None] = print) -> Path:
    """The local file of PaddleClas's pretrained weights for constructor ``name``:
    cached, or downloaded once into PaddleClas's cache; one-line CheckpointError offline."""
    try:
        url = paddleclas_weights_url(name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    cached = cached_paddleclas_weights(name)
    if cached is not None:
        return cached
    dest = (WEIGHTS_HOME / url.rsplit("/", 1)[-1]).expanduser()
    log(f"downloading PaddleClas's {name} weights from {url} to {dest}")
    try:
        _fetch(url, dest)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # DNS, refused, timeout, HTTP error, disk full: all "no usable file"
        cause = exc.reason if type(exc) is urllib.error.URLError else exc  # "[Errno -2] Name or service not known"
        reason = " ".join(str(cause).split()) or type(exc).__name__
        raise CheckpointError(
            f"download of PaddleClas's {name} weights failed ({reason}; {url}); pass --pretrained PATH "
            f"with a local {dest.name}, or put it in {WEIGHTS_HOME}/") from None
    return dest


# --- how images are normalised ----------------------------------------------------------

def pretrained_normalization(value: str | None, path: str | Path | None, backbone: str | None = None
                             ) -> tuple[tuple[float, ...], tuple[float, ...], str] | None:
    """``(mean, std, where from)`` the pretrained weights expect, or None (no weights:
    the dataset's own statistics).

    ``value`` is ``transfer.pretrained`` as configured, ``path`` the resolved file,
    ``backbone`` the PaddleClas backbone the model is (``model.backbone``), if any.
    PaddleClas's weights use their family's values; a ppadapt run's checkpoint (a
    ``run.json`` with mean/std beside it) the run's; any other external checkpoint
    (ppadapt's ViT uses PaddleClas's names, so that is the format it loads) those of
    ``backbone``, or 0.5 / 0.5 (PaddleClas's ViTs) without one.
    """
    if path is None:
        return None
    if is_paddleclas_ref(value):
        name = paddleclas_name(value)
        return (*paddleclas_normalization(name), f"PaddleClas's, for its {name} weights")
    record = record_path(Path(path).parent)
    if record.is_file():
        try:
            run = read_record(record, require=("mean", "std"))
            mean, std = tuple(float(v) for v in run.mean), tuple(float(v) for v in run.std)
            if len(mean) == len(std) == 3:
                return mean, std, f"the pretraining run's, from {record}"
        except (CheckpointError, ValueError, TypeError):  # not a usable record: taken as external
            pass
    if backbone is not None:
        return (*paddleclas_normalization(backbone),
                f"PaddleClas's for {backbone}: a checkpoint with no ppadapt run.json beside it is taken as its weights")
    return (PADDLECLAS_MEAN, PADDLECLAS_STD,
            "PaddleClas's: a checkpoint with no ppadapt run.json beside it is taken as a PaddleClas ViT")


# --- how the weights fit --------------------------------------------------------------

def resample_pos_embed(pos_embed: np.ndarray, new_grid: int, num_prefix_tokens: int = 1,
                       mode: str = "bicubic") -> np.ndarray:
    """Resample a ``[1, prefix + g*g, D]`` position embedding to a ``new_grid`` square grid.

    The class token (the first ``num_prefix_tokens``) is kept as is; the grid part
    is resized bicubically (timm's ``resample_abs_pos_embed``). Same grid: returned
    unchanged (the same array).
    """
    pos = np.asarray(pos_embed)
    if pos.ndim != 3 or pos.shape[0] != 1:
        raise ValueError(f"pos_embed must be [1, tokens, dim], got {list(pos.shape)}")
    prefix, grid = pos[:, :num_prefix_tokens], pos[0, num_prefix_tokens:]
    old_grid = math.isqrt(grid.shape[0])
    if old_grid * old_grid != grid.shape[0]:
        raise ValueError(f"pos_embed has {grid.shape[0]} patch tokens, not a square grid")
    if old_grid == new_grid:
        return pos_embed
    a = resize_matrix(old_grid, new_grid, mode)
    g = grid.astype(np.float64).reshape(old_grid, old_grid, -1)
    out = np.einsum("ij,jkd,lk->ild", a, g, a).reshape(1, new_grid * new_grid, -1)
    return np.concatenate([prefix, out.astype(pos.dtype)], axis=1)


def resample_patch_embed(weight: np.ndarray, new_size: int, mode: str = "bicubic") -> np.ndarray:
    """Resample a ``[D, C, p, p]`` patch-embedding kernel to ``new_size x new_size``.

    FlexiViT's pseudo-inverse resize (timm's ``resample_patch_embed``): with ``R`` the
    resize of a ``p x p`` image patch to ``new_size x new_size``, the new kernel ``w'``
    solves ``<R x, w'> = <x, w>`` for every patch ``x`` (exactly when enlarging, in the
    least-squares sense when shrinking), so a resized image gives the old model's
    patch features. Since ``R`` is separable, ``pinv(R) = pinv(A) (x) pinv(A)``.
    """
    w = np.asarray(weight)
    old = w.shape[-1]
    if w.ndim != 4 or w.shape[-2] != old:
        raise ValueError(f"patch kernel must be [D, C, p, p], got {list(w.shape)}")
    if old == new_size:
        return weight
    p = np.linalg.pinv(resize_matrix(old, new_size, mode))  # old x new
    out = np.einsum("dckl,ki,lj->dcij", w.astype(np.float64), p, p)
    return out.astype(w.dtype)


def _numpy(value) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def resample_rel_pos_table(table: np.ndarray, new_span: int, mode: str = "bicubic") -> np.ndarray:
    """Resample BEiT's ``[span**2 + 3, heads]`` relative position bias table to ``new_span``
    (``2 grid - 1``) offsets a side: the offset grid is resized as the position embedding's
    patch grid is, the three class-token entries at the end are kept. Same span: unchanged."""
    t = np.asarray(table)
    span = math.isqrt(t.shape[0] - 3)
    if t.ndim != 2 or span * span + 3 != t.shape[0]:
        raise ValueError(f"relative position bias table must be [span**2 + 3, heads], got {list(t.shape)}")
    if span == new_span:
        return table
    return np.concatenate([resample_offset_grid(t[:-3], new_span, mode), t[-3:]], axis=0)


def _adapt_rel_pos(out: dict, own: Mapping, notes: list[str]) -> None:
    """BEiTv2's per-block tables to the model's patch grid, with the model's index buffers."""
    resampled = []
    for key in [k for k in out if k.endswith(REL_POS_TABLE) and k in own]:
        have, want = list(out[key].shape), list(own[key].shape)
        old, new = math.isqrt(have[0] - 3), math.isqrt(want[0] - 3)
        if (have != want and len(have) == 2 and have[1] == want[1] and old ** 2 + 3 == have[0]
                and new ** 2 + 3 == want[0]):
            out[key] = resample_rel_pos_table(_numpy(out[key]), new)
            index = key[:-len(REL_POS_TABLE)] + REL_POS_INDEX
            if index in out and index in own:  # a function of the grid alone: the model's
                out[index] = _numpy(own[index])
            resampled.append((old, new))
    if resampled:
        old, new = resampled[0]
        notes.append(f"resampled {len(resampled)} relative_position_bias_table from {old}x{old} to {new}x{new} "
                     "offsets (bicubic, the class-token entries kept), with the model's relative_position_index")


def adapt_state_dict(state: Mapping, model) -> tuple[dict, list[str]]:
    """A checkpoint filter: ``state`` with its position embedding and patch kernel
    resampled to ``model``'s patch grid and patch size where they differ, and PaddleClas's
    foundation-ViT differences bridged: a missing patch-embedding bias becomes zeros (its
    constructor has none; a zero bias is the same function), ``proj``, an image
    projection no classifier uses, is dropped unless the model has one (``model.output_dim``),
    and a missing ``fc_norm`` starts as the identity.

    BEiTv2's relative position bias tables are resampled to the model's patch grid too.
    Only these tensors are touched, and the resampled ones only when their width (and
    channels, heads) match the model's; any other difference is left for
    :func:`ppadapt.runs.checkpoint.load_weights` to report. Returns the new dict (the
    input is not modified) and one note per change, for the log.
    """
    own = model.state_dict()
    out, notes = dict(state), []
    for key in UNUSED_KEYS:
        if key in out and key not in own:
            del out[key]
            notes.append(f"ignored {key} {list(state[key].shape)} (PaddleClas's foundation-ViT image projection, "
                         "which its classifier does not use)")
    if PATCH_BIAS in own and PATCH_BIAS not in out and PATCH_KERNEL in out:
        out[PATCH_BIAS] = np.zeros_like(_numpy(own[PATCH_BIAS]))
        notes.append(f"{PATCH_BIAS} is not in the checkpoint (PaddleClas's foundation ViTs have none): set to zero")
    if FC_NORM + ".weight" in own and FC_NORM + ".weight" not in out:  # PaddleClas keeps it in its Head
        out[FC_NORM + ".weight"] = np.ones_like(_numpy(own[FC_NORM + ".weight"]))
        out[FC_NORM + ".bias"] = np.zeros_like(_numpy(own[FC_NORM + ".bias"]))
        notes.append(f"{FC_NORM} is not in the checkpoint: starts as the identity LayerNorm (scale 1, shift 0)")
    if PATCH_KERNEL in out and PATCH_KERNEL in own:
        have, want = list(out[PATCH_KERNEL].shape), list(own[PATCH_KERNEL].shape)
        if have != want and have[:2] == want[:2] and len(have) == 4 and have[2] == have[3] and want[2] == want[3]:
            out[PATCH_KERNEL] = resample_patch_embed(_numpy(out[PATCH_KERNEL]), want[-1])
            notes.append(f"resampled {PATCH_KERNEL} from patch {have[-1]} to {want[-1]} "
                         "(pseudo-inverse resize, as timm's resample_patch_embed)")
    if POS_EMBED in out and POS_EMBED in own:
        have, want = list(out[POS_EMBED].shape), list(own[POS_EMBED].shape)
        old_grid, new_grid = math.isqrt(have[1] - 1), math.isqrt(want[1] - 1)
        if (have != want and len(have) == 3 and have[0] == 1 and have[2] == want[2]
                and old_grid ** 2 == have[1] - 1 and new_grid ** 2 == want[1] - 1):
            out[POS_EMBED] = resample_pos_embed(_numpy(out[POS_EMBED]), new_grid)
            notes.append(f"resampled {POS_EMBED} from a {old_grid}x{old_grid} to a {new_grid}x{new_grid} "
                         "patch grid (bicubic, class token kept)")
    _adapt_rel_pos(out, own, notes)
    return out, notes


# The tensors that tell PaddleClas's foundation ViT families apart: (marker, what it means).
_FAMILY_MARKERS = {
    "BEiTv2": ((".gamma_1", "layer scale gamma_1"), (".relative_position_bias_table", "relative position bias")),
    "CLIP": (("ln_pre.weight", "ln_pre"),),
}


def vit_family(keys) -> tuple[str, str]:
    """``(family, evidence)`` of a ViT state dict's ``keys``: ``BEiTv2`` (layer scale or relative
    position bias), ``CLIP`` (``ln_pre``) or ``plain ViT``, and the tensors that say so."""
    keys = list(keys)
    for family, markers in _FAMILY_MARKERS.items():
        found = [words for marker, words in markers if any(k == marker or k.endswith(marker) for k in keys)]
        if found:
            return family, ", ".join(found)
    evidence = "pos_embed, no layer scale, relative position bias or ln_pre" if POS_EMBED in keys else \
        "no layer scale, relative position bias or ln_pre"
    return "plain ViT", evidence


def check_same_family(state: Mapping, model) -> None:
    """One :class:`CheckpointError` line when a ViT checkpoint is of another family than ``model``
    (a CLIP state dict given to a BEiTv2 backbone, ...), before the key-by-key listing would."""
    if checkpoint_family(state) == SWIN:
        raise CheckpointError("the checkpoint is a Swin Transformer's (layers.N.blocks.M) but the model is a ViT "
                              "(blocks.N): pass the Swin --backbone it was made for (SwinTransformer_...), or a "
                              "ViT checkpoint")
    if not any(k.startswith("blocks.") for k in state):
        return  # not a ViT's state dict: load_weights says what does not fit
    have, why = vit_family(state)
    want, how = vit_family(model.state_dict())
    if have != want:
        raise CheckpointError(f"the checkpoint is a {have} ({why}) but the model is a {want} ({how}); "
                              f"pass the --backbone the checkpoint was made for, or a {want} checkpoint")


def _is_swin_model(model) -> bool:
    return isinstance(getattr(model, "config", None), SwinConfig)


def load_pretrained(model: paddle.nn.Layer, path: str | Path,
                    log: Callable[[str], None] | None = None) -> list[str]:
    """Load a backbone checkpoint for transfer: the head is always new, and the tensors of
    modules that methods attached (e.g. branches the model carries) may be absent (a
    PaddleClas ViT has none) and stay at their init; anything else must match, after the
    position embedding and patch kernel are resampled to the model's patch grid and patch
    size where they differ (:func:`ppadapt.runs.pretrained.adapt_state_dict`)."""
    state = load_state_dict(str(path))
    if _is_swin_model(model):
        state, notes = adapt_swin_state_dict(state, model)
    else:
        check_same_family(state, model)
        state, notes = adapt_state_dict(state, model)
    for note in notes:
        (log or print)(note)
    added = added_parameter_names(model)
    return load_weights(model, state, skip=lambda k: k.startswith("head."), allow_missing=added.__contains__)


def resolve_pretrained(cfg: Config, log: Callable[[str], None] = print) -> Path | None:
    """The local file of ``transfer.pretrained``: a path, ``paddleclas:NAME`` (PaddleClas's
    weights, cached or downloaded: :func:`ppadapt.runs.pretrained.paddleclas_weights`), ``none``
    (None: from scratch), or unset (the pretraining run of the same config)."""
    value = cfg.transfer.pretrained
    if value is not None and value.lower() == "none":
        return None
    if is_paddleclas_ref(value):
        return paddleclas_weights(paddleclas_name(value), log)
    path = Path(value) if value else default_pretrained(cfg)
    if not path.is_file():
        how = (f"run `python ppadapt/train.py --pretrain {cfg.pretrain.dataset}"
               f"{'' if cfg.name == 'tutorial' else ' --config <same config>'}` first, "
               "pass --pretrained PATH, or --pretrained none to start from scratch")
        raise CheckpointError(f"pretrained checkpoint not found: {path} ({how})")
    return path
