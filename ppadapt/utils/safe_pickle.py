"""Unpickling that cannot run code: only the globals a caller allows are ever looked up.

A pickle is a small program: its ``GLOBAL``/``STACK_GLOBAL`` (and ``EXT``,
``INST``, ``OBJ``) opcodes import any callable by name, and ``REDUCE``, ``NEWOBJ``
and ``BUILD`` call it, so ``pickle.load`` of a crafted file runs whatever the file
says (``os.system``, ``builtins.exec``, ...). Every one of those opcodes gets its
callable from :meth:`RestrictedUnpickler.find_class`, which here answers only from
an explicit table of ``(module, name) -> object`` and raises
:class:`UnsafePickleError` for anything else, *before* it is imported, let alone
called. Persistent ids are refused too (no ``persistent_load``). What is left is
plain data: ``None``, bools, numbers, strings, bytes, lists, tuples, dicts and
sets, which the opcodes build without calling anything named in the file.

The table's entries are the only code a file can reach, so they are strict
stand-ins rather than the real callables where the real one would accept more
than its data needs: :data:`NUMPY_ARRAYS` rebuilds arrays, dtypes and scalars of
plain (non-object) numbers only. This is the idea of ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import _compat_pickle
import io
import pickle
from typing import Any, BinaryIO, Mapping

import numpy as np

try:  # numpy >= 2 moved these; pickles name whichever module wrote them
    from numpy._core.multiarray import _reconstruct as _np_reconstruct, scalar as _np_scalar
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct, scalar as _np_scalar

_SHOWN = 100  # characters of a refused name shown in a message


def _shown(text: Any) -> str:
    """A name from a file, safe to print on one line (a crafted name may hold newlines)."""
    text = str(text)
    if not text.isprintable():
        text = ascii(text)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for a global (a callable or class) that is not allowed, or calls
    an allowed one in a way its data never needs; nothing it names was run.

    ``target`` is what it asked for (``"os.system"``), ``detail`` why an allowed global
    was refused (empty for a global that is not allowed at all); both one-line safe.
    """

    def __init__(self, target: str, detail: str = "") -> None:
        self.target, self.detail = _shown(target), " ".join(str(detail).split())
        super().__init__(f"{self.target} is not allowed" + (f" ({self.detail})" if self.detail else ""))


class _NDArrayMarker:
    """What ``find_class`` returns for ``numpy.ndarray``: pickles name the class as
    ``_reconstruct``'s argument, never call it themselves. No attributes (``__slots__``),
    so a pickle's ``BUILD`` cannot change it for later loads."""

    __slots__ = ()
    target = "numpy.ndarray"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsafePickleError(self.target, "called directly instead of through numpy's array pickling")

    def __repr__(self) -> str:
        return f"<{self.target} (allowed as an argument only)>"


NDARRAY = _NDArrayMarker()


def _plain_dtype(value: Any, target: str) -> np.dtype:
    if not isinstance(value, np.dtype):
        raise UnsafePickleError(target, f"with a {type(value).__name__} instead of a numpy dtype")
    if value.hasobject:
        raise UnsafePickleError(target, "of Python objects (dtype 'O'): only numbers are allowed")
    return value


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """``numpy.core.multiarray._reconstruct`` of a plain ``numpy.ndarray`` only."""
    if subtype is not NDARRAY:
        raise UnsafePickleError("numpy.core.multiarray._reconstruct", f"of {subtype!r} instead of numpy.ndarray")
    return _np_reconstruct(np.ndarray, shape, dtype)


def _dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """``numpy.dtype(spec, align, copy=True)`` for a type code string of a non-object dtype
    (bytes in Python 2 pickles read with ``encoding="bytes"``). Always a copy, as numpy
    pickles it: the ``BUILD`` that follows must not change numpy's shared dtype objects."""
    if isinstance(spec, bytes):
        spec = spec.decode("ascii", "replace")
    if not isinstance(spec, str):
        raise UnsafePickleError("numpy.dtype", f"of a {type(spec).__name__} instead of a type code")
    return _plain_dtype(np.dtype(spec, bool(align), True), "numpy.dtype")


def _scalar(dtype: Any, *args: Any) -> Any:
    """``numpy.core.multiarray.scalar(dtype, raw bytes)``: a numpy number."""
    _plain_dtype(dtype, "numpy.core.multiarray.scalar")
    if len(args) != 1 or not isinstance(args[0], bytes):
        raise UnsafePickleError("numpy.core.multiarray.scalar", "without its raw bytes")
    return _np_scalar(dtype, args[0])


def _codecs_encode(text: Any, encoding: Any = "utf-8", *args: Any) -> bytes:
    """``_codecs.encode(str, "latin1")``: how protocol-2 pickles of Python 3 store bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or args:
        raise UnsafePickleError("_codecs.encode", "other than of a str to latin1 bytes")
    return text.encode("latin1")


#: numpy arrays (any shape, non-object dtype), dtypes and scalars, as numpy 1.x and 2.x
#: pickle them; and bytes as protocol-2 pickles store them.
NUMPY_ARRAYS: Mapping[tuple[str, str], Any] = {
    **{(module, "_reconstruct"): _reconstruct for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "scalar"): _scalar for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _codecs_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose globals come from ``allowed`` only (see the module doc)."""

    def __init__(self, file: BinaryIO, allowed: Mapping[tuple[str, str], Any], *,
                 encoding: str = "ASCII") -> None:
        super().__init__(file, encoding=encoding)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (__builtin__, copy_reg, ...), as the stock find_class maps them.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        try:
            return self._allowed[(module, name)]
        except (KeyError, TypeError):  # TypeError: an unhashable "name" from a crafted file
            raise UnsafePickleError(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("a persistent id", "external objects are not allowed")


def load(file: BinaryIO, allowed: Mapping[tuple[str, str], Any], *, encoding: str = "ASCII") -> Any:
    """``pickle.load(file)`` that allows only the globals of ``allowed``
    (:class:`UnsafePickleError` otherwise, before anything is called)."""
    return RestrictedUnpickler(file, allowed, encoding=encoding).load()


def loads(data: bytes, allowed: Mapping[tuple[str, str], Any], *, encoding: str = "ASCII") -> Any:
    """``pickle.loads(data)`` that allows only the globals of ``allowed``."""
    return load(io.BytesIO(data), allowed, encoding=encoding)


__all__ = ["NDARRAY", "NUMPY_ARRAYS", "RestrictedUnpickler", "UnsafePickleError", "load", "loads"]
