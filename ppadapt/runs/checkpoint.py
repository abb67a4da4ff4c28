"""Crash-safe checkpoint files, and loading them with errors that say what is wrong.

Saving writes a hidden temporary file in the target's directory, fsyncs it, and
renames it over the target with ``os.replace`` (atomic on POSIX and Windows within
one file system). An interrupted run (Ctrl-C, OOM kill, power loss) therefore
leaves either the previous complete file or the new complete file, never a
truncated one. A save that fails (disk full, no permission) removes its temporary
file and raises a one-line :class:`~ppadapt.errors.CheckpointWriteError` that says
the previous file is intact. Only a process killed outright (SIGKILL, power loss)
leaves its temporary file (``.NAME.<host>-<pid>-<random>.tmp``) behind; the next
save of the same file removes those of processes of this host that no longer run.

Folders (an adapter: tensors plus their config) are written the same way as a whole
(:func:`atomic_write_dir`): into a hidden temporary folder, then renamed into place, so a
reader finds the previous complete folder or the new one, never one file of each.

A state dict is written as a ``.pdparams`` (Paddle's pickle, the default) or as
``.safetensors`` (:func:`save_state_dict` picks by the suffix); safetensors files are
plain bytes plus a JSON header, read with no unpickling at all, which is why shared
files (adapters) use them.

Loading never runs code from the file: :func:`load_state_dict` reads a ``.pdparams`` through
:mod:`ppadapt.runs.paddle_pickle` (the values ``paddle.load`` gives, from a restricted
unpickler), so a ``.pdparams`` that would call anything but numpy's and Paddle's own
tensor pickling is refused with one line before any of it runs. A truncated or
corrupt file (``EOFError: Ran out of input``, ...) is a one-line :class:`CheckpointError`, and
:func:`load_weights` checks names and shapes before copying anything, so a
checkpoint of another architecture fails with a list of the differences instead of
loading partially with a warning.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import uuid
import warnings
import zlib
from typing import Any, Callable, Mapping

import numpy as np
import paddle
import safetensors.paddle

from ..errors import CheckpointError, CheckpointWriteError
from ..utils.safe_pickle import UnsafePickleError
from . import paddle_pickle

_SHOWN = 4  # names listed per kind of mismatch before "and N more"
_INTACT = "pass an intact .pdparams (copy it again, or re-run the training that wrote it)"
_INTACT_ST = "pass an intact .safetensors (copy it again, or re-run the training that wrote it)"
SAFETENSORS = ".safetensors"
_TRUSTED = ("pass a .pdparams that paddle.save wrote from a state dict, or that ppadapt wrote, from a "
            "source you trust")


_HOST = f"{zlib.crc32(socket.gethostname().encode()):08x}"  # temp files of another host are never touched


def _temp_path(path: str) -> str:
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def remove_stale_temps(path: str) -> list[str]:
    """Delete the temporary files (and folders, see :func:`atomic_write_dir`) that saves of
    ``path`` by killed processes left behind (this host, a process that no longer runs);
    returns their paths. A folder's previous version (``.old``) is removed only once ``path``
    exists again, since until then it is the only complete copy. POSIX only."""
    if os.name != "posix":  # os.kill(pid, 0) would signal the process on Windows
        return []
    directory, name = os.path.split(os.path.abspath(path))
    pattern = re.compile(rf"\.{re.escape(name)}\.{_HOST}-(\d+)-[0-9a-f]{{8}}\.(tmp|old)")
    removed = []
    try:
        entries = os.listdir(directory)
    except OSError:
        return []
    for entry in entries:
        match = pattern.fullmatch(entry)
        if not match or int(match.group(1)) == os.getpid() or _pid_alive(int(match.group(1))):
            continue
        if match.group(2) == "old" and not os.path.exists(path):
            continue
        target = os.path.join(directory, entry)
        try:
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            else:
                os.remove(target)
            removed.append(target)
        except OSError:
            pass
    return removed


def _write_error(path: str, exc: OSError, existed: bool) -> CheckpointWriteError:
    """The one-line error of a failed save of ``path``."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    reason = reason[:1].lower() + reason[1:]
    if exc.errno == errno.EISDIR:
        problem = f"cannot write {path}: a directory of that name is in the way"
    else:
        problem = f"{reason} while writing {path}"
    name = os.path.basename(path)
    problem += f"; the previous {name} is intact" if existed else f"; no {name} was written"
    return CheckpointWriteError(problem, "free some space or fix the permissions, then save again", path,
                                exc.errno)


def _fsync_dir(directory: str) -> None:
    """Persist the rename itself; not possible (nor needed) on some platforms."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Run ``write(temp_path)``, fsync the result, then rename it onto ``path``; an OSError
    becomes a one-line CheckpointWriteError (``path`` untouched, no temporary file left)."""
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    existed = os.path.isfile(path)
    tmp = _temp_path(path)
    try:
        os.makedirs(directory, exist_ok=True)
        remove_stale_temps(path)  # first: on a full disk, that space may be what this save needs
        write(tmp)
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, CheckpointWriteError):
            raise _write_error(path, exc, existed) from exc
        raise
    _fsync_dir(directory)


def atomic_save(obj: Any, path: str) -> None:
    """``paddle.save(obj, path)`` that never leaves ``path`` truncated or half-written."""
    _atomic_write(path, lambda tmp: paddle.save(obj, tmp))


def _fsync_file(path: str) -> None:
    with open(path, "rb+") as f:
        f.flush()
        os.fsync(f.fileno())


def atomic_write_dir(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Run ``write(temp_folder)`` (it fills a new, empty folder), fsync what it wrote, then
    put the folder at ``path`` in place of the previous one, so that readers never see a
    mix of old and new files. The swap is two renames (the previous folder aside, the new
    one in): a process killed between them leaves no folder at ``path`` and the previous
    one, complete, as ``.NAME.<host>-<pid>-<random>.old``. An OSError becomes a one-line
    CheckpointWriteError, with the previous folder put back."""
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise CheckpointWriteError(f"cannot write the folder {path}: a file of that name is in the way",
                                   "move or delete that file, then save again", path)
    tmp = _temp_path(path)
    aside = tmp[:-len(".tmp")] + ".old"
    existed = os.path.isdir(path)
    moved = False
    try:
        os.makedirs(directory, exist_ok=True)
        remove_stale_temps(path)
        os.mkdir(tmp)
        write(tmp)
        for entry in os.listdir(tmp):
            if os.path.isfile(os.path.join(tmp, entry)):
                _fsync_file(os.path.join(tmp, entry))
        _fsync_dir(tmp)
        if existed:
            os.rename(path, aside)
            moved = True
        os.rename(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if moved and not os.path.exists(path):
            try:
                os.rename(aside, path)
            except OSError:
                pass
        if isinstance(exc, OSError) and not isinstance(exc, CheckpointWriteError):
            raise _write_error(path, exc, existed) from exc
        raise
    if moved:
        shutil.rmtree(aside, ignore_errors=True)
    _fsync_dir(directory)


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a safetensors file (by its suffix, as every ppadapt reader decides)."""
    return os.fspath(path).endswith(SAFETENSORS)


def _dense(value: Any) -> paddle.Tensor:
    """A contiguous CPU tensor of ``value`` (a tensor, parameter or array), as safetensors needs."""
    tensor = value if isinstance(value, paddle.Tensor) else paddle.to_tensor(np.ascontiguousarray(value))
    tensor = tensor.detach()
    return tensor if tensor.is_contiguous() else tensor.contiguous()


def write_safetensors(state: Mapping[str, Any], path: str | os.PathLike,
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write ``state`` (name -> tensor or array, any dtype Paddle has: float32, bfloat16,
    float16, ints) to ``path`` in the safetensors format, exact bytes; not atomic by itself
    (see :func:`save_safetensors`, :func:`atomic_write_dir`)."""
    tensors = {str(k): _dense(v) for k, v in state.items()}
    safetensors.paddle.save_file(tensors, os.fspath(path), metadata=dict(metadata) if metadata else None)


def save_safetensors(state: Mapping[str, Any], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> None:
    """:func:`write_safetensors`, atomically (see :func:`atomic_save`)."""
    _atomic_write(os.fspath(path), lambda tmp: write_safetensors(state, tmp, metadata))


def save_state_dict(state: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a state dict atomically, as safetensors when ``path`` ends in ``.safetensors``,
    else as Paddle's ``.pdparams`` (``paddle.save``, byte for byte what it always wrote)."""
    if is_safetensors(path):
        save_safetensors(state, path, {"format": "paddle"})
    else:
        atomic_save(state, os.fspath(path))


def file_sha256(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file: what an adapter's config records of its tensors file, so a
    corrupt or mixed-up copy is found before it loads."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_default(value: Any) -> Any:
    """numpy scalars/arrays (e.g. dataset mean/std) and paths, which ``json`` refuses."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def atomic_write_json(data: dict, path: str) -> None:
    """Write ``data`` as indented JSON to ``path``, atomically (see :func:`atomic_save`)."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, default=json_default)
            f.write("\n")

    _atomic_write(path, write)


def _is_array(value: Any) -> bool:
    return isinstance(value, (paddle.Tensor, np.ndarray))


def refused(what: str, exc: UnsafePickleError, fix: str) -> str:
    """The one-line message of a file refused because loading it would run code."""
    detail = f" {exc.detail}" if exc.detail else ""
    return (f"{what} was not loaded: it asks to call {exc.target}{detail}, and ppadapt loads only data "
            f"(arrays, numbers, strings, lists, dicts) from such files, so nothing in it was run ({fix})")


def load_failure(exc: Exception, path: str | os.PathLike) -> str:
    """``"ValueError: ..."``: the first line of what loading ``path`` raised,
    short and without the path (the message around it names the file)."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    reason = reason.replace(f":{path}", "").replace(str(path), "the file")
    return f"{type(exc).__name__}: {reason[:160]}"


def read_safetensors(path: str | os.PathLike, what: str = "checkpoint", fix: str = _INTACT_ST) -> dict:
    """The tensors of a safetensors file (name -> paddle.Tensor, in the file's dtypes), read
    as bytes: no pickle, no code, and no memory map left on the file (the tensors own their
    memory, so the file may be replaced while they are used). A truncated, corrupt or
    foreign file is one CheckpointError line; ``what`` names the file in it, ``fix`` says what to do."""
    return read_safetensors_hashed(path, what, fix)[0]


def read_safetensors_hashed(path: str | os.PathLike, what: str = "checkpoint",
                            fix: str = _INTACT_ST) -> tuple[dict, str]:
    """:func:`read_safetensors` and the hex SHA-256 of the bytes it read (what an adapter's
    config records of its tensors file), from one read of the file."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        tensors = safetensors.paddle.load(data)
    except Exception as e:  # SafetensorError (header, bounds), an unknown dtype, ...
        raise CheckpointError(
            f"{what} {path} ({size:,} bytes) cannot be read: it is truncated, corrupt or not a "
            f"safetensors file ({load_failure(e, path)}); {fix}") from None
    return tensors, hashlib.sha256(data).hexdigest()


def load_state_dict(path: str | os.PathLike) -> dict:
    """Load a state dict (name -> tensor) from a ``.pdparams`` (the restricted unpickler) or a
    ``.safetensors`` (no unpickling at all), or raise a one-line CheckpointError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(
            f"checkpoint not found: {path} (train one first, which writes best.pdparams and "
            "final.pdparams in its run directory, or pass --pretrained PATH to an existing file)")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} is not a file")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): an interrupted copy? "
                              "Re-create or re-download it")
    if is_safetensors(path):
        state = read_safetensors(path)
        if not state:
            raise CheckpointError(f"checkpoint {path} holds no tensors: not a checkpoint of weights; "
                                  f"{_INTACT_ST}")
        return state
    try:
        state = paddle_pickle.load(path)
    except UnsafePickleError as e:
        raise CheckpointError(refused(f"checkpoint {path}", e, _TRUSTED)) from None
    except Exception as e:  # UnpicklingError, EOFError, ValueError, ... of a bad file
        raise CheckpointError(
            f"checkpoint {path} ({size:,} bytes) cannot be read: it is truncated, corrupt or not a "
            f"Paddle file ({load_failure(e, path)}); {_INTACT}") from None
    if not isinstance(state, dict) or not state or not all(_is_array(v) for v in state.values()):
        # e.g. paddle.save of a list, or a dict of numbers
        kind = f"a {type(state).__name__}" + (" of non-tensors" if isinstance(state, dict) and state else "")
        raise CheckpointError(f"checkpoint {path} is not a Paddle state dict (name -> tensor) but reads "
                              f"as {kind}: a corrupt file, or not a .pdparams of weights; {_INTACT}")
    return state


def _listing(items: list[str], what: str) -> str:
    """``"7 missing keys (a, b, c, d and 3 more)"``: long lists stay readable on one line."""
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return f"{len(items)} {what} ({', '.join(items[:_SHOWN])}{more})"


def _shape(value: Any) -> list[int]:
    return [int(d) for d in value.shape]


def load_weights(model: paddle.nn.Layer, state: dict, *,
                 skip: Callable[[str], bool] = lambda k: False,
                 allow_missing: Callable[[str], bool] = lambda k: False) -> list[str]:
    """Copy ``state`` into ``model`` after checking that they fit, all or nothing.

    Keys where ``skip(k)`` are ignored on both sides (e.g. a classifier head for
    another class count). Model keys absent from ``state`` are an error unless
    ``allow_missing(k)`` (e.g. adapter branches that the backbone checkpoint never
    had); checkpoint keys the model lacks and shape differences are always errors.
    Returns the model keys that keep their initial values: the skipped ones and
    the allowed missing ones.
    """
    own = model.state_dict()
    ckpt = {k: v for k, v in state.items() if not skip(k)}
    absent = [k for k in own if k not in ckpt]
    missing = [k for k in absent if not skip(k) and not allow_missing(k)]
    unexpected = [k for k in ckpt if k not in own]
    mismatched = [k for k in ckpt if k in own and _shape(ckpt[k]) != _shape(own[k])]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(_listing(missing, "missing keys"))
        if unexpected:
            problems.append(_listing(unexpected, "unexpected keys"))
        if mismatched:
            problems.append(_listing([f"{k}: checkpoint {_shape(ckpt[k])} vs model {_shape(own[k])}"
                                      for k in mismatched], "shape mismatches"))
        raise CheckpointError(
            "checkpoint does not fit the model: " + "; ".join(problems)
            + "; it was probably made for another architecture "
              "(compare embed_dim/width, depth and patch_size with the model's config)")
    matched = {k: v for k, v in ckpt.items() if k in own}
    for k, v in matched.items():
        if v.dtype != own[k].dtype:  # e.g. a float16 checkpoint into a float32 model
            matched[k] = paddle.cast(paddle.to_tensor(v), own[k].dtype)
    with warnings.catch_warnings():  # Paddle warns per key left out; we reported those above
        warnings.filterwarnings("ignore", message="Skip loading for")
        model.set_state_dict(matched)
    return absent
