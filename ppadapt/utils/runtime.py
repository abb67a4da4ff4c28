"""CPU speed settings for Paddle, applied when ppadapt is imported.

Before Paddle is imported (:func:`apply_cpu_defaults`): Paddle pins itself to one
OpenMP thread unless ``OMP_NUM_THREADS`` says otherwise, and MKL takes a slow
generic path on AMD processors unless ``MKL_DEBUG_CPU_TYPE=5``. Measured on a
2-core AMD EPYC with the CPU preset's ViT (width 192, depth 6, batch 64, one full
training step): 3.79 s with Paddle's defaults, 2.45 s with two threads, 2.19 s
with the MKL setting, 1.78 s with both.

After Paddle is imported, on a CPU-only device (:func:`tune_cpu_runtime`):

* Stride kernels off. Paddle 3 makes ``transpose``/``unbind`` return strided
  views and copies them later with a slow generic strided-copy kernel (in
  ``matmul`` and in the gradient of ``reshape``); Paddle's dense transpose kernel
  is several times faster. Values are identical either way.
* glibc's malloc keeps freed blocks up to 32 MiB instead of returning them to the
  OS. By default every activation above 128 KiB is a fresh ``mmap`` whose pages
  the kernel faults in and zeroes again on every step, which made element-wise
  kernels ~10x slower than the arithmetic (an add of 3.2M floats: ~10 ms -> ~1 ms).
  The cost is that the process keeps its peak heap instead of shrinking.

Values the user has set (the environment variables named here) are never overridden.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import io
import os
import sys
import warnings


def cpu_defaults() -> dict[str, str]:
    """The environment the tools use unless the user has set these variables.

    The cores are shared among the processes that ``paddle.distributed.launch``
    starts on this machine (``PADDLE_LOCAL_SIZE``), so they do not oversubscribe.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        local_processes = max(1, int(os.environ.get("PADDLE_LOCAL_SIZE", "1")))
    except ValueError:
        local_processes = 1
    return {"OMP_NUM_THREADS": str(max(1, cores // local_processes)), "MKL_DEBUG_CPU_TYPE": "5"}


def apply_cpu_defaults() -> dict[str, str]:
    """Set the fast CPU settings for this process; returns what was actually set.

    Has no effect once Paddle is imported (its thread pool is already sized), so
    the command-line tools call it first thing.
    """
    if "paddle" in sys.modules:
        return {}
    applied = {}
    for key, value in cpu_defaults().items():
        if key not in os.environ:
            os.environ[key] = value
            applied[key] = value
    return applied


# glibc mallopt() parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit
_TRIM_THRESHOLD = 1 << 30
_TOP_PAD = 64 << 20


def tune_cpu_runtime() -> dict[str, str]:
    """Apply the post-import CPU settings (see the module docstring); returns what was set.

    Does nothing when Paddle runs on an accelerator, or for a setting whose
    environment variable the user has set.
    """
    import paddle  # not at the top: this module runs before Paddle is imported (apply_cpu_defaults)

    if not paddle.device.get_device().startswith("cpu"):
        return {}
    applied = {}
    if "FLAGS_use_stride_kernel" not in os.environ:
        paddle.set_flags({"FLAGS_use_stride_kernel": False})
        applied["FLAGS_use_stride_kernel"] = "0"
    if not any(k.startswith("MALLOC_") for k in os.environ) and _keep_freed_memory():
        applied["malloc"] = f"mmap threshold {_MMAP_THRESHOLD >> 20} MiB"
    return applied


def _keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds; False where there is no glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
        (_M_TOP_PAD, _TOP_PAD)))


def import_paddle_quietly() -> None:
    """Import Paddle without its start-up chatter on stderr.

    With ``OMP_NUM_THREADS`` > 1 Paddle prints a warning meant for data-parallel
    GPU jobs, and it warns that ccache (a C++ build cache) is missing; neither
    concerns a user of these tools, and they would bury our one-line errors.
    Anything else Paddle prints at import is passed through.
    """
    if "paddle" in sys.modules:
        return
    captured = io.StringIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ccache.*")
        with contextlib.redirect_stderr(captured):
            import paddle  # noqa: F401  (the import this function exists for, with its output captured)
    noise = ("OMP_NUM_THREADS set to", "PLEASE USE OMP_NUM_THREADS WISELY")
    rest = [line for line in captured.getvalue().splitlines()
            if line.strip() and not any(n in line for n in noise)]
    if rest:
        print("\n".join(rest), file=sys.stderr)
