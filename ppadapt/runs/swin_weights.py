"""PaddleClas Swin weights into ppadapt's Swin: what fits as is, what is resampled, what is refused.

ppadapt's Swin has PaddleClas's names, so a PaddleClas ``.pdparams`` loads with no renaming.
:func:`adapt_swin_state_dict` bridges what depends on the geometry only:

* a ``relative_position_bias_table`` for another window size (e.g. window-7 weights in a
  window-12 model at 384 px) is resampled bicubically over its (2W-1) x (2W-1) grid of
  offsets, per head, as timm's ``resize_rel_pos_bias_table``; the model's own
  ``relative_position_index`` (a function of its window) is kept;
* ``attn_mask`` buffers that converted checkpoints may carry are dropped: ppadapt computes
  the masks of shifted windows from the map size.

A checkpoint of another family (a ViT's ``cls_token``/``pos_embed``/``blocks.N``) is refused
in one line naming both, rather than as a list of missing and unexpected keys.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

import numpy as np

from ..errors import CheckpointError
from .resampling import resample_offset_grid

TABLE = "relative_position_bias_table"
INDEX = "relative_position_index"
MASK = "attn_mask"
SWIN, VIT = "Swin Transformer", "ViT"


def checkpoint_family(keys: Iterable[str]) -> str | None:
    """``"Swin Transformer"`` (``layers.N.blocks.M``), ``"ViT"`` (``blocks.N``, ``cls_token``,
    ``pos_embed``) or None: which backbone a state dict was saved from, by its names."""
    keys = list(keys)
    if any(k.startswith("layers.") and ".blocks." in k for k in keys):
        return SWIN
    if any(k in ("cls_token", "pos_embed") or k.startswith("blocks.") for k in keys):
        return VIT
    return None


def resample_relative_position_bias(table: np.ndarray, window: int) -> np.ndarray:
    """A ``[(2W-1)^2, heads]`` bias table resampled to window ``window`` (bicubic over the grid of
    offsets, per head; the same array when the window is the same). ``ValueError`` if the rows
    are not an odd square (a table with extra rows, BEiT's class-token ones, is not Swin's)."""
    rows, heads = table.shape
    side = math.isqrt(rows)
    if side * side != rows or side % 2 == 0:
        raise ValueError(f"a relative position bias table of {rows} rows is not a (2W-1)^2 grid of offsets")
    return resample_offset_grid(table, 2 * window - 1)


def _numpy(value) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def adapt_swin_state_dict(state: Mapping, model) -> tuple[dict, list[str]]:
    """``state`` fitted to the Swin ``model`` (see the module docstring); returns the new dict
    (the input is not modified) and one note per kind of change. CheckpointError for a
    checkpoint of another family."""
    family = checkpoint_family(state)
    if family == VIT:
        raise CheckpointError("this checkpoint is a ViT's (cls_token, pos_embed, blocks.N) and the model is a "
                              "Swin Transformer (layers.N.blocks.M): give a Swin checkpoint, or choose a ViT backbone")
    own = model.state_dict()
    out, notes = dict(state), []
    masks = [k for k in out if k.rsplit(".", 1)[-1] == MASK and k not in own]
    for key in masks:
        del out[key]
    if masks:
        notes.append(f"ignored {len(masks)} {MASK} buffers (ppadapt computes the shifted-window masks)")
    resampled = set()
    for key in [k for k in out if k.endswith(TABLE) and k in own]:
        have, want = list(out[key].shape), list(own[key].shape)
        if have == want or len(have) != 2 or have[1] != want[1]:
            continue  # equal, or another head count: load_weights reports it
        try:
            out[key] = resample_relative_position_bias(_numpy(out[key]), math.isqrt(want[0]) // 2 + 1)
        except ValueError:
            continue
        resampled.add((have[0], want[0]))
        index = key[:-len(TABLE)] + INDEX
        if index in own:
            out[index] = own[index]
    for old, new in sorted(resampled):
        notes.append(f"resampled {TABLE} from window {math.isqrt(old) // 2 + 1} to {math.isqrt(new) // 2 + 1} "
                     "(bicubic over the grid of relative offsets, per head)")
    return out, notes
