"""Compile ``cpu_kernels.cc`` with Paddle's C++ extension builder on first use, and cache it.

The build lives under ``$XDG_CACHE_HOME/ppadapt/kernels`` (``~/.cache`` by default) in a folder
named by a hash of everything the binary depends on: the source, Paddle's version and commit,
Python, and this CPU's instruction-set flags (the code is built for the machine it runs on, so
a cache shared between different machines cannot hand one of them the other's code). Later
processes load it in about a second. A lock file keeps concurrent processes (``paddle.distributed
.launch``) from building into the same folder at once.

Nothing here raises: when there is no compiler, no OpenMP, or the build fails, :func:`load`
returns ``None`` and :func:`failure` gives one line saying why and where the compiler's output
is, and the caller trains with the pure-Paddle layers instead.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

import paddle

SOURCE = Path(__file__).with_name("cpu_kernels.cc")
OPS = ("ppadapt_gelu_fwd", "ppadapt_gelu_bwd", "ppadapt_softmax_fwd", "ppadapt_softmax_bwd",
       "ppadapt_layer_norm_fwd", "ppadapt_layer_norm_bwd", "ppadapt_dropout_fwd", "ppadapt_dropout_bwd",
       "ppadapt_split_heads", "ppadapt_merge_heads", "ppadapt_heads_to_tokens", "ppadapt_tokens_to_heads",
       "ppadapt_relu_dropout_fwd", "ppadapt_relu_dropout_bwd", "ppadapt_add", "ppadapt_channel_bias",
       "ppadapt_channel_sum")
CXX_FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno")

# By root (None: the default cache root); the default is looked up on every fused layer call,
# so its entry is found without touching the environment or the file system.
_loaded: dict[str | None, ModuleType | None] = {}
_failure: dict[str | None, str] = {}


def cache_root() -> Path:
    """Where builds are kept: ``$XDG_CACHE_HOME/ppadapt/kernels`` (default ``~/.cache/...``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ppadapt" / "kernels"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def build_key() -> str:
    """A hash of what the compiled kernels depend on (see the module docstring)."""
    commit = getattr(getattr(paddle, "version", None), "commit", "")
    parts = [SOURCE.read_bytes().hex(), paddle.__version__, str(commit), sys.version, platform.machine(),
             _cpu_flags(), " ".join(CXX_FLAGS)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _link_flags() -> list[str]:
    """Link against Paddle's own OpenMP runtime where the wheel ships one (Intel's libiomp5): a
    second OpenMP runtime in the process would keep its own threads, and Intel's threads spin
    for a while after each of Paddle's parallel regions, fighting them for the cores."""
    libs = Path(paddle.__file__).parent / "libs"
    if (libs / "libiomp5.so").exists():
        return [f"-L{libs}", "-liomp5", f"-Wl,-rpath,{libs}"]
    return ["-fopenmp"]


@contextlib.contextmanager
def _output_to(path: Path):
    """Send this process's stdout and stderr (the compiler's included) to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


@contextlib.contextmanager
def _locked(folder: Path):
    import fcntl

    with open(folder / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build(folder: Path, log: Callable[[str], None] | None) -> ModuleType:
    from paddle.utils.cpp_extension import load as load_extension

    key = folder.name
    folder.mkdir(parents=True, exist_ok=True)
    if log is not None and not any(folder.rglob("*.so")):
        log(f"compiling ppadapt's fused CPU kernels into {folder} (once for this machine and Paddle, about 10 s)")
    name = f"ppadapt_cpu_kernels_{key}"
    with _locked(folder), _output_to(folder / "build.log"):
        module = load_extension(name=name, sources=[str(SOURCE)], extra_cxx_cflags=list(CXX_FLAGS),
                                extra_ldflags=_link_flags(), build_directory=str(folder), verbose=False)
    missing = [op for op in OPS if not hasattr(module, op)]
    if missing:
        raise RuntimeError(f"the built module lacks {', '.join(missing)}")
    return module


def load(root: Path | None = None, log: Callable[[str], None] | None = None) -> ModuleType | None:
    """The compiled kernels (a module with the functions in ``OPS``), built on first use (``log``
    gets one line when a build starts); ``None`` where they cannot be built here (:func:`failure`
    says why). Decided once per process."""
    key = str(root) if root is not None else None
    if key in _loaded:
        return _loaded[key]
    root = Path(root) if root is not None else cache_root()
    module = None
    if os.name != "posix":
        _failure[key] = "the fused kernels are built for Linux and macOS only"
    elif shutil.which(os.environ.get("CXX", "c++")) is None:
        _failure[key] = "no C++ compiler found (install g++)"
    else:
        folder = root / build_key()
        try:
            module = _build(folder, log)
        except Exception as exc:  # any build or load failure means: use the Paddle layers
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            _failure[key] = f"building them failed ({reason[:200]}); the compiler's output is in {folder / 'build.log'}"
    _loaded[key] = module
    return module


def failure(root: Path | None = None) -> str | None:
    """Why :func:`load` returned ``None`` for ``root`` (None if it has not, or has not been called)."""
    return _failure.get(str(root) if root is not None else None)
