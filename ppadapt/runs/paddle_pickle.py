"""Reading ``paddle.save`` files (``.pdparams``, ``.pdckpt``) without running code.

``paddle.load`` unpickles whatever a file holds, so a crafted ``.pdparams`` runs
code the moment it is loaded (before any check of what it loaded). :func:`load`
returns what ``paddle.load(path, return_numpy=...)`` returns for the files Paddle's
``paddle.save`` and ppadapt write, but unpickles through
:class:`ppadapt.utils.safe_pickle.RestrictedUnpickler`, which refuses every global
not listed here with :class:`~ppadapt.utils.safe_pickle.UnsafePickleError` before
anything is called.

How Paddle 3 pickles (``paddle/framework/io.py``), and so what is allowed:

* a **state dict** (every value a tensor): ``_legacy_save`` stores each tensor as a
  numpy array, plus ``"StructuredToParameterName@@"`` (key -> tensor name), and
  splits arrays over 2**30 bytes into ``key@@.N`` slices listed under
  ``"UnpackBigParamInfor@@"`` (protocols 2 and 3 only): numpy arrays and dtypes.
* **anything else** (a resume checkpoint: a dict of numbers, strings, lists, dicts and
  arrays): ``_pickle_save`` with a dispatch table that stores a dygraph tensor as
  ``(tuple, ((name, array),))`` (``builtins.tuple``, allowed) and a ``DenseTensor``
  as ``(eval, ("data", {"data": array}))``: ``builtins.eval`` is *not* allowed; a
  stand-in accepts exactly that expression and returns the array without evaluating
  anything.
* numpy scalars (``numpy.core.multiarray.scalar``), ``collections.OrderedDict``
  (state dicts of older Paddle and PaddleClas), and protocol-2 bytes
  (``_codecs.encode``) for files written with an older protocol.

After unpickling, the same conversions as ``paddle.load``: slices joined, the name
table applied and dropped, ``(name, array)`` tuples or (when there are none) arrays
turned into tensors, or kept as numpy arrays with ``return_numpy=True``.
``paddle.load``'s fallbacks for non-pickle files (a bare ``DenseTensor``, a
``Program``) are not attempted: ppadapt reads only pickled dicts, and such a file
fails as unreadable.

Resume checkpoints also hold Paddle's generator state as a pickle inside a uint8
array (``pickle.dumps(paddle.get_rng_state())``); :func:`generator_states` reads
it allowing only ``paddle.base.libpaddle.GeneratorState``.
"""
from __future__ import annotations

import collections
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import paddle
from paddle.base import libpaddle

from ..utils import safe_pickle
from ..utils.safe_pickle import UnsafePickleError

NAME_TABLE = "StructuredToParameterName@@"
SLICES = "UnpackBigParamInfor@@"  # sic: Paddle's key


def _dense_tensor_data(expression: Any, namespace: Any = None, *rest: Any) -> np.ndarray:
    """What ``eval("data", {"data": array})`` gives (how ``paddle.save`` stores a
    ``DenseTensor``), without evaluating anything; any other use of eval is refused."""
    if (expression == "data" and not rest and type(namespace) is dict and list(namespace) == ["data"]
            and isinstance(namespace["data"], np.ndarray)):
        return namespace["data"]
    raise UnsafePickleError("builtins.eval", "other than as paddle.save stores a DenseTensor")


#: Everything a ``paddle.save`` file of tensors, numbers, strings, lists and dicts needs.
PADDLE_FILE: dict[tuple[str, str], Any] = {
    **safe_pickle.NUMPY_ARRAYS,
    ("builtins", "tuple"): tuple,  # a dygraph tensor: tuple((name, array))
    ("builtins", "eval"): _dense_tensor_data,  # a DenseTensor: eval("data", {"data": array})
    ("collections", "OrderedDict"): collections.OrderedDict,
}


def _generator_state_class() -> type:
    return libpaddle.GeneratorState


def generator_state_globals() -> dict[tuple[str, str], Any]:
    """The one global of ``pickle.dumps(paddle.get_rng_state())``."""
    cls = _generator_state_class()
    return {(cls.__module__, cls.__qualname__): cls}


def generator_states(blob: bytes) -> list:
    """``pickle.loads(blob)`` of a pickled ``paddle.get_rng_state()``: a list of Paddle
    ``GeneratorState``, the only class allowed. UnsafePickleError for anything else in it,
    ValueError when it unpickles to something else."""
    states = safe_pickle.loads(bytes(blob), generator_state_globals())
    cls = _generator_state_class()
    if not isinstance(states, list) or not all(isinstance(s, cls) for s in states):
        raise ValueError(f"not a list of Paddle generator states but a {type(states).__name__}")
    return states


# --- paddle.load's conversions after unpickling -----------------------------------------

def _is_named_array(obj: Any) -> bool:  # paddle.framework.io._transformed_from_varbase
    return isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], np.ndarray)


def _is_array(obj: Any) -> bool:  # paddle.framework.io._transformed_from_lodtensor
    return isinstance(obj, np.ndarray)


def _contains(obj: Any, condition) -> bool:  # paddle.framework.io._contain_x
    if condition(obj):
        return True
    if type(obj) in (dict, collections.OrderedDict):
        return any(_contains(v, condition) for v in obj.values())
    if type(obj) in (list, tuple):
        return any(_contains(v, condition) for v in obj)
    return False


def _convert(obj: Any, condition, convert) -> Any:  # paddle.framework.io._parse_every_object
    if condition(obj):
        return convert(obj)
    if type(obj) in (dict, collections.OrderedDict, list):
        keys = range(len(obj)) if type(obj) is list else list(obj.keys())
        for key in keys:
            obj[key] = convert(obj[key]) if condition(obj[key]) else _convert(obj[key], condition, convert)
        return obj
    if type(obj) is tuple:
        return tuple(_convert(list(obj), condition, convert))
    if type(obj) is set:
        return set(_convert(list(obj), condition, convert))
    if isinstance(obj, Iterable) and not isinstance(obj, (str, np.ndarray, paddle.Tensor)):
        raise NotImplementedError("The iterable objects supported are tuple, list, dict, OrderedDict, string. "
                                  f"But received {type(obj)}.")
    return obj


def _no_objects(obj: Any) -> None:
    """Refuse arrays of Python objects however they were built (numpy's dtype pickling
    lets a ``BUILD`` change a dtype after :func:`safe_pickle._dtype` checked it)."""
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.hasobject:
        raise UnsafePickleError("numpy.ndarray", "of Python objects (dtype 'O'): only numbers are allowed")
    if isinstance(obj, dict):
        for value in obj.values():
            _no_objects(value)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for value in obj:
            _no_objects(value)


def _as_loaded(obj: Any, return_numpy: bool) -> Any:
    """What ``paddle.load`` makes of the unpickled ``obj`` (``paddle.framework.io.load``,
    its dict branch and ``_parse_load_result``; no Layer can be unpickled here)."""
    def tensor(array: np.ndarray):
        return array if return_numpy else paddle.to_tensor(array)

    def named(pair: tuple):
        if return_numpy:
            return pair[1]
        t = paddle.to_tensor(pair[1])
        t.name = pair[0]
        return t

    if isinstance(obj, dict):
        if SLICES in obj:  # paddle.framework.io_utils._pack_loaded_dict
            removes = []
            for key, value in obj[SLICES].items():
                obj[key] = np.concatenate([obj[part] for part in value["slices"]]).reshape(value["OriginShape"])
                removes += value["slices"]
            for key in removes:
                obj.pop(key)
            obj.pop(SLICES)
        if NAME_TABLE in obj:
            for key, name in obj[NAME_TABLE].items():
                if isinstance(obj[key], np.ndarray):
                    obj[key] = tensor(obj[key])
                    if not return_numpy and getattr(obj[key], "name", ""):
                        obj[key].name = name
            del obj[NAME_TABLE]
            return obj
    if _contains(obj, _is_named_array):
        return _convert(obj, _is_named_array, named)
    return _convert(obj, _is_array, tensor)


def load(path: str | os.PathLike, *, return_numpy: bool = False) -> Any:
    """``paddle.load(path, return_numpy=return_numpy)`` of a pickled ``paddle.save`` file,
    allowing only :data:`PADDLE_FILE`'s globals.

    Raises :class:`~ppadapt.utils.safe_pickle.UnsafePickleError` (nothing in the file was
    run) for a file that needs anything else; a truncated or corrupt file raises what
    unpickling raises (``UnpicklingError``, ``EOFError``, ``ValueError``, ...).
    """
    with open(path, "rb") as f:
        obj = safe_pickle.load(f, PADDLE_FILE, encoding="latin1")  # latin1: as paddle.load
    _no_objects(obj)
    return _as_loaded(obj, return_numpy)


__all__ = ["NAME_TABLE", "PADDLE_FILE", "UnsafePickleError", "generator_state_globals", "generator_states",
           "load"]
