"""What the benchmark measures besides step times: the machine's GEMM rate, peak memory,
optimizer state, and the machine itself."""
from __future__ import annotations

import ctypes
import gc
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import paddle
from paddle.base import core

from .stats import summarize


# --- the machine --------------------------------------------------------------

def sync() -> None:
    """Wait for the device (a no-op on CPU, where Paddle's eager ops are synchronous)."""
    if paddle.device.get_device().startswith("gpu"):
        paddle.device.synchronize()


class GemmProbe:
    """Times fp32 ``paddle.matmul`` of one fixed shape, as often as asked.

    The benchmark samples it before, between the timed rounds and after the
    methods, so the reference rate sees the same machine load as the steps.
    """

    def __init__(self, shape: tuple[int, int, int] = (1024, 1024, 1024), warmup: int = 3):
        self.shape = tuple(int(s) for s in shape)
        m, k, n = self.shape
        self.a = paddle.randn([m, k], dtype="float32")
        self.b = paddle.randn([k, n], dtype="float32")
        self.phases: dict[str, list[float]] = {}
        for _ in range(max(warmup, 0)):
            paddle.matmul(self.a, self.b)
        sync()

    def measure(self, repeats: int = 1, phase: str = "samples") -> None:
        """Append ``repeats`` GFLOP/s samples to ``phase``."""
        flops = 2.0 * self.shape[0] * self.shape[1] * self.shape[2]
        samples = self.phases.setdefault(phase, [])
        for _ in range(max(repeats, 1)):
            t0 = time.perf_counter()
            c = paddle.matmul(self.a, self.b)
            sync()
            samples.append(flops / (time.perf_counter() - t0) / 1e9)
            del c

    def summary(self) -> dict:
        """All samples pooled (median, spread), plus each phase's median."""
        pooled = [x for xs in self.phases.values() for x in xs]
        return {"shape": list(self.shape), **summarize(pooled),
                "phase_medians": {p: statistics.median(xs) for p, xs in self.phases.items()}}


def gemm_gflops(size: int = 1024, repeats: int = 20, warmup: int = 3,
                shape: tuple[int, int, int] | None = None) -> dict:
    """The machine's fp32 ``paddle.matmul`` rate in GFLOP/s: median (and spread) over ``repeats``.

    ``shape`` is ``(M, K, N)`` (default ``size`` cubed). This is the yardstick of
    the "share of GEMM" columns: what the same library reaches on one big,
    well-shaped matrix product with the same threads.
    """
    probe = GemmProbe(shape or (size, size, size), warmup)
    probe.measure(repeats)
    out = probe.summary()
    del out["phase_medians"]
    return out


def machine_info() -> dict:
    """What the numbers depend on: CPU, cores, thread settings, Paddle, device, load."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "device": paddle.device.get_device(), "paddle": paddle.__version__,
            "python": platform.python_version(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "MKL_DEBUG_CPU_TYPE": os.environ.get("MKL_DEBUG_CPU_TYPE"),
            "loadavg": loadavg()}


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the system has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# --- memory -------------------------------------------------------------------

def malloc_trim() -> None:
    """Give freed heap memory back to the OS (glibc), so the next method's peak
    resident set starts from what is really in use."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _tensor_stat(kind: str) -> int | None:
    """Paddle allocator's current or peak bytes of the device in use (None if unknown)."""
    try:
        if paddle.device.get_device().startswith("gpu"):
            return int(paddle.device.cuda.max_memory_allocated() if kind == "peak"
                       else paddle.device.cuda.memory_allocated())
        fn = core.host_memory_stat_peak_value if kind == "peak" else core.host_memory_stat_current_value
        return int(fn("Allocated", 0))
    except Exception:  # noqa: BLE001 - an optional statistic: absent in some builds
        return None


def _reset_tensor_peak() -> None:
    try:
        if paddle.device.get_device().startswith("gpu"):
            paddle.device.cuda.reset_max_memory_allocated()
        else:
            core.host_memory_stat_reset_peak_value("Allocated", 0)
    except Exception:  # noqa: BLE001
        pass


class MemoryProbe:
    """Peak memory of a window of this process: reset, run, read.

    ``rss_source`` says how the resident peak was measured: ``VmHWM`` (Linux,
    reset per window) or ``ru_maxrss`` (process-wide peak since start, never reset:
    the same for every method once the largest has run).
    """

    def __init__(self) -> None:
        self.rss_source = "VmHWM" if self._clear_refs() and _status_kib("VmHWM") is not None else "ru_maxrss"
        self.baseline_rss = 0
        self.baseline_tensor: int | None = None

    @staticmethod
    def _clear_refs() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current VmRSS
            return True
        except OSError:
            return False

    def reset(self) -> None:
        gc.collect()
        malloc_trim()
        if self.rss_source == "VmHWM":
            self._clear_refs()
            self.baseline_rss = (_status_kib("VmRSS") or 0) * 1024
        else:
            self.baseline_rss = 0
        _reset_tensor_peak()
        self.baseline_tensor = _tensor_stat("current")

    def read(self) -> dict:
        if self.rss_source == "VmHWM":
            peak = (_status_kib("VmHWM") or 0) * 1024
            delta: int | None = peak - self.baseline_rss
        else:
            scale = 1 if sys.platform == "darwin" else 1024
            peak, delta = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, None
        tensor_peak = _tensor_stat("peak")
        tensor = (tensor_peak - self.baseline_tensor
                  if tensor_peak is not None and self.baseline_tensor is not None else None)
        return {"peak_rss_bytes": peak, "rss_baseline_bytes": self.baseline_rss if delta is not None else None,
                "peak_rss_increase_bytes": delta, "rss_source": self.rss_source,
                "peak_tensor_bytes": tensor}


def optimizer_state_bytes(optimizer: Any) -> int:
    """Bytes of the optimizer's accumulators (Momentum's velocity, Adam's moments,
    fp32 master weights): what the optimizer keeps per trainable parameter.
    They are created by the first step, so call it after one."""
    total = 0
    for per_param in getattr(optimizer, "_accumulators", {}).values():
        for tensor in per_param.values():
            total += int(tensor.numel()) * tensor.element_size()
    for tensor in getattr(optimizer, "_master_weights", {}).values():
        total += int(tensor.numel()) * tensor.element_size()
    return total

