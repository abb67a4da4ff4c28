"""Adapter-only checkpoints: just the tensors a method trained, plus its config.

A tuned task is then a small file on top of a shared backbone (as HF PEFT does):
for AdaptFormer on ViT-B about 1.4% of a full checkpoint. Loading checks that
the file was made for the same method and shapes, and fails with one line
otherwise.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import paddle
import paddle.nn as nn

from .checkpoint import atomic_save, load_state_dict
from ..errors import CheckpointError

META_KEY = "__ppadapt_adapter__"


def adapter_state(model: nn.Layer) -> dict:
    """The trainable tensors of ``model`` by parameter name, and the head's buffers (the
    running statistics of a ``bn_linear`` head: they train with it but are no parameters)."""
    state = {name: p for name, p in model.named_parameters() if not p.stop_gradient}
    params = {name for name, _ in model.named_parameters()}
    state.update({k: v for k, v in model.state_dict().items() if k.startswith("head.") and k not in params})
    return state


def save_adapter(model: nn.Layer, path: str | Path, meta: dict) -> None:
    """Write the trainable tensors and ``meta`` (method name, options, ...) atomically."""
    state = dict(adapter_state(model))
    # Stored as a uint8 tensor of UTF-8 JSON, so the file stays a plain name -> tensor state dict.
    blob = json.dumps(meta, sort_keys=True, default=str).encode()
    state[META_KEY] = paddle.to_tensor(np.frombuffer(blob, dtype="uint8").copy())
    atomic_save(state, str(path))


def read_adapter(path: str | Path) -> tuple[dict, dict]:
    """(tensors, meta) of an adapter file; CheckpointError if it is not one."""
    state = load_state_dict(str(path))
    if META_KEY not in state:
        raise CheckpointError(f"{path} is not an adapter file (no {META_KEY} entry); pass a file that "
                              "transfer.py wrote as adapter.pdparams")
    blob = state.pop(META_KEY)
    meta = json.loads(bytes(np.asarray(blob.numpy() if hasattr(blob, "numpy") else blob, dtype="uint8")))
    return state, meta


def load_adapter(model: nn.Layer, path: str | Path, method: str | None = None) -> dict:
    """Load an adapter file onto ``model`` (backbone + the same method applied); returns its meta."""
    tensors, meta = read_adapter(path)
    if method is not None and meta.get("method") != method:
        raise CheckpointError(f"{path} holds a '{meta.get('method')}' adapter but the model uses method "
                              f"'{method}'; pass --method {meta.get('method')}")
    own = model.state_dict()
    missing = sorted(k for k in tensors if k not in own)
    wrong = sorted(k for k in tensors if k in own and list(tensors[k].shape) != list(own[k].shape))
    if missing or wrong:
        bad = (missing + wrong)[:3]
        raise CheckpointError(f"adapter file {path} does not fit the model ({len(missing)} unknown and "
                              f"{len(wrong)} mis-shaped tensors, e.g. {', '.join(bad)}); use the same "
                              "config and method options it was trained with")
    model.set_state_dict(tensors)
    return meta
