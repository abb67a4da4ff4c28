"""Speed, memory and FLOPs of the tuning methods, measured in one process.

``python ppadapt/bench.py`` builds each method's model exactly as ``transfer.py``
does (:func:`ppadapt.methods.build.build_model`, :func:`~ppadapt.methods.build.apply_transfer_method`,
:func:`~ppadapt.training.engine.make_optimizer`, fixed seed) and times the path training
takes: ``paddle.Model.prepare(optimizer, CrossEntropyLoss, Accuracy)`` then
``train_batch`` (forward, backward, optimizer step, metrics) per step and
``predict_batch`` for inference. So any speed work on the model or the methods
shows up here unchanged.

How it measures, and why:

* **Order.** By default (``order="interleaved"``) every model is built and warmed
  up first, then one untimed round of every method restores the allocator's
  steady state (each set-up trimmed the heap to measure memory), then the timed
  steps go in rounds, one step of each method per round, the starting method
  rotating from round to round. Slow drifts of the
  machine (another job, thermal state) then spread evenly over the methods
  instead of favouring whichever ran last. All models are alive together, which
  is cheap for the CPU preset but not for ViT-B: ``order="sequential"`` builds,
  warms, times and frees one method after the other.
* **Statistics.** Median over the timed steps, with min/max and the quartiles;
  images/s is the batch size over the median step time.
* **Memory.** Per method, from just before the model is built until the end of
  its warm-up (which holds the first optimizer step and inference): the peak
  resident set (Linux ``VmHWM``, reset by writing ``5`` to
  ``/proc/self/clear_refs`` after ``malloc_trim`` hands freed heap back to the
  OS), reported absolute and as the increase over the resident set at the
  reset; and the peak of Paddle's own tensor allocator over that window.
  Without ``/proc`` it falls back on ``getrusage`` (process-wide, never reset)
  and says so. In interleaved order the earlier methods' models stay alive,
  so compare the increases, not the absolute peaks.
* **FLOPs.** :func:`ppadapt.apps.bench.flops.train_step_flops`: matmul FLOPs of forward +
  backward counted from one real forward on the benchmark batch, an
  approximation that ignores element-wise work. Achieved GFLOP/s is those FLOPs
  over the median step time; the share is that over the machine's fp32
  ``paddle.matmul`` rate measured here (:class:`GemmProbe`, square 1024 by
  default, sampled before, between the timed rounds and after, pooled median).

The models keep their random initial weights: no checkpoint is loaded, since
speed does not depend on the values.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from ...config import CONFIG_DIR, Config, legacy_notes, load_config, validate
from ...config.tuning import FREEZE
from ...errors import ConfigError, DataError, PPAdaptError
from ...methods import get_method, method_of_flag

DEFAULT_CONFIG = CONFIG_DIR / "cpu.yaml"
DEFAULT_METHODS = ("full", method_of_flag(FREEZE).name)  # the tutorial's comparison: full vs --freeze
ORDERS = ("interleaved", "sequential")
MIB = 2 ** 20

Log = Callable[[str], None]


def _quiet(msg: str) -> None:
    pass


# --- statistics ---------------------------------------------------------------

def summarize(samples: Sequence[float]) -> dict:
    """Median, min, max, quartiles and the raw samples of a list of measurements."""
    xs = sorted(float(s) for s in samples)
    if not xs:
        raise ValueError("no samples")
    if len(xs) >= 2:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = q3 = xs[0]
    return {"median": statistics.median(xs), "min": xs[0], "max": xs[-1], "q1": q1, "q3": q3,
            "n": len(xs), "samples": [float(s) for s in samples]}


def _rate(batch: int, seconds: dict) -> dict:
    """Images/s from step-time statistics (the slowest step gives the lowest rate)."""
    return {"median": batch / seconds["median"], "min": batch / seconds["max"], "max": batch / seconds["min"]}


# --- the machine --------------------------------------------------------------

def _sync() -> None:
    """Wait for the device (a no-op on CPU, where Paddle's eager ops are synchronous)."""
    import paddle
    if paddle.device.get_device().startswith("gpu"):
        paddle.device.synchronize()


class GemmProbe:
    """Times fp32 ``paddle.matmul`` of one fixed shape, as often as asked.

    The benchmark samples it before, between the timed rounds and after the
    methods, so the reference rate sees the same machine load as the steps.
    """

    def __init__(self, shape: tuple[int, int, int] = (1024, 1024, 1024), warmup: int = 3):
        import paddle
        self.shape = tuple(int(s) for s in shape)
        m, k, n = self.shape
        self.a = paddle.randn([m, k], dtype="float32")
        self.b = paddle.randn([k, n], dtype="float32")
        self.phases: dict[str, list[float]] = {}
        for _ in range(max(warmup, 0)):
            paddle.matmul(self.a, self.b)
        _sync()

    def measure(self, repeats: int = 1, phase: str = "samples") -> None:
        """Append ``repeats`` GFLOP/s samples to ``phase``."""
        import paddle
        flops = 2.0 * self.shape[0] * self.shape[1] * self.shape[2]
        samples = self.phases.setdefault(phase, [])
        for _ in range(max(repeats, 1)):
            t0 = time.perf_counter()
            c = paddle.matmul(self.a, self.b)
            _sync()
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
    import paddle
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
            "loadavg": _loadavg()}


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# --- memory -------------------------------------------------------------------

def _malloc_trim() -> None:
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
    import paddle
    try:
        if paddle.device.get_device().startswith("gpu"):
            return int(paddle.device.cuda.max_memory_allocated() if kind == "peak"
                       else paddle.device.cuda.memory_allocated())
        from paddle.base import core
        fn = core.host_memory_stat_peak_value if kind == "peak" else core.host_memory_stat_current_value
        return int(fn("Allocated", 0))
    except Exception:  # noqa: BLE001 - an optional statistic: absent in some builds
        return None


def _reset_tensor_peak() -> None:
    import paddle
    try:
        if paddle.device.get_device().startswith("gpu"):
            paddle.device.cuda.reset_max_memory_allocated()
        else:
            from paddle.base import core
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
        _malloc_trim()
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


# --- inputs -------------------------------------------------------------------

def random_batch(cfg: Config, batch_size: int, classes: int, seed: int = 0) -> tuple:
    """One batch of standard-normal images and uniform labels (Paddle tensors)."""
    import numpy as np
    import paddle
    rng = np.random.default_rng(seed)
    s, c = cfg.model.img_size, cfg.model.in_chans
    x = rng.standard_normal((batch_size, c, s, s)).astype("float32")
    y = rng.integers(0, classes, (batch_size, 1)).astype("int64")
    return paddle.to_tensor(x), paddle.to_tensor(y)


def real_batches(cfg: Config, data_file: str, batch_size: int, count: int) -> tuple[list, int, float]:
    """``count`` batches of the transfer stage's training data (with its augmentation),
    read through the project's data code from a CIFAR archive.

    Returns ``(batches, number of classes, seconds per batch of loading)``; the
    loading is timed here, once, and every method then trains on the same batches.
    """
    import paddle
    from ...data import build_datasets
    st = cfg.transfer
    if st.dataset not in ("cifar10", "cifar100"):
        raise ConfigError(f"--data-file needs transfer.dataset cifar10 or cifar100, got {st.dataset!r} "
                          "(pass -o transfer.dataset=cifar10 or cifar100)")
    data = build_datasets(st.dataset, role="transfer", img_size=cfg.model.img_size, data_file=data_file,
                          classes=st.classes, augment=st.augment)
    if len(data.train) < batch_size:
        raise DataError(f"batch size {batch_size} is larger than the {len(data.train)} training images "
                        f"of {data_file}; pass a smaller --batch-size")
    paddle.seed(cfg.seed)
    loader = paddle.io.DataLoader(data.train, batch_size=batch_size, shuffle=True, drop_last=True,
                                  num_workers=st.num_workers)
    batches: list = []
    t0 = time.perf_counter()
    while len(batches) < count:
        for x, y in loader:
            batches.append((x, y))
            if len(batches) == count:
                break
    seconds = (time.perf_counter() - t0) / count
    return batches, data.num_classes, seconds


# --- one method ---------------------------------------------------------------

def method_config(cfg: Config, method: str, options: dict | None = None) -> Config:
    """``cfg`` with the transfer stage set to ``method`` (and its options), checked."""
    c = copy.deepcopy(cfg)
    c.method.name = method
    c.method.options = dict(options or {})
    c.transfer.freeze = False
    try:
        validate(c)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return c


class _Runner:
    """One method's model, prepared exactly as ``transfer.py`` prepares it."""

    def __init__(self, cfg: Config, method: str, classes: int, batches: list, probe: MemoryProbe):
        self.cfg, self.method, self.classes, self.batches, self.probe = cfg, method, classes, batches, probe
        self.train_s: list[float] = []
        self.infer_s: list[float] = []
        self.warmup_train_s: list[float] = []

    def setup(self, warmup: int) -> None:
        """Build, count, warm up (training and inference), and measure memory over it."""
        import paddle
        from paddle.static import InputSpec

        from ...methods.build import apply_transfer_method, build_model
        from ...training.engine import make_optimizer, seed_everything
        from .flops import train_step_flops
        from ...methods.trainable import count_parameters

        cfg = self.cfg
        self.probe.reset()
        seed_everything(cfg.seed)
        model = build_model(cfg, self.classes)
        apply_transfer_method(model, cfg)
        self.params = count_parameters(model)
        size = cfg.model.img_size
        net = paddle.Model(model, inputs=[InputSpec([None, cfg.model.in_chans, size, size], "float32", "image")],
                           labels=[InputSpec([None, 1], "int64", "label")])
        optimizer = make_optimizer(model, cfg, "transfer")
        net.prepare(optimizer, paddle.nn.CrossEntropyLoss(),
                    paddle.metric.Accuracy(topk=(1, min(5, self.classes))))
        self.model, self.net, self.optimizer = model, net, optimizer
        self.flops = train_step_flops(model, self.batches[0][0])
        for i in range(warmup):
            self.warmup_train_s.append(self._train(i))
        for i in range(warmup):
            self._infer(i)
        self.memory = self.probe.read()
        self.optimizer_bytes = optimizer_state_bytes(optimizer)

    def _train(self, i: int) -> float:
        x, y = self.batches[i % len(self.batches)]
        t0 = time.perf_counter()
        self.net.train_batch([x], [y])
        _sync()
        return time.perf_counter() - t0

    def _infer(self, i: int) -> float:
        x, _ = self.batches[i % len(self.batches)]
        t0 = time.perf_counter()
        self.net.predict_batch([x])
        _sync()
        return time.perf_counter() - t0

    def train_step(self, i: int) -> None:
        self.train_s.append(self._train(i))

    def infer_step(self, i: int) -> None:
        self.infer_s.append(self._infer(i))

    def free(self) -> None:
        """Drop the model, optimizer and ``paddle.Model`` so the next method starts clean."""
        for attr in ("net", "optimizer", "model"):
            if hasattr(self, attr):
                delattr(self, attr)
        gc.collect()
        _malloc_trim()

    def row(self, batch_size: int) -> dict:
        p = self.params
        train, infer = summarize(self.train_s), summarize(self.infer_s)
        forward = self.flops.forward
        return {
            "method": self.method,
            "options": dict(self.cfg.method.options),
            "batch_size": batch_size,
            "params": {"trainable": p.trainable, "without_head": p.without_head, "head": p.head,
                       "total": p.total, "trainable_bytes": p.trainable_bytes},
            "optimizer_state_bytes": self.optimizer_bytes,
            "train_s": train, "train_images_per_s": _rate(batch_size, train),
            "infer_s": infer, "infer_images_per_s": _rate(batch_size, infer),
            "warmup_train_s": self.warmup_train_s,
            "memory": self.memory,
            "flops": self.flops.to_dict(),
            "train_gflops_per_s": self.flops.train / train["median"] / 1e9,
            "infer_gflops_per_s": forward / infer["median"] / 1e9,
        }


# --- the benchmark ------------------------------------------------------------

def benchmark(cfg: Config, methods: Sequence[str], *, batch_size: int | None = None, steps: int = 10,
              warmup: int = 2, classes: int = 10, batches: list | None = None,
              order: str = "interleaved", method_options: dict[str, dict] | None = None,
              on_round: Callable[[], None] | None = None, log: Log = _quiet) -> list[dict]:
    """Time training and inference steps of each method; one dict per method.

    ``cfg`` gives the model and the transfer stage (optimizer, batch size);
    ``batches`` is a list of ``(images, labels)`` tensors cycled through (default:
    one random batch). Every row has the step-time statistics, images/s,
    memory, parameter counts, optimizer-state bytes, FLOPs and achieved GFLOP/s,
    and ``ratio_to_full`` (train and inference median over full fine-tuning's)
    when ``full`` is among ``methods``. ``on_round`` is called after every timed
    training round (interleaved) or after each method (sequential), e.g. to sample
    the GEMM rate under the same load.
    """
    from ...methods import get_method

    if steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}")
    if warmup < 1:
        raise ConfigError(f"--warmup must be at least 1 (the first step creates the optimizer state), got {warmup}")
    if order not in ORDERS:
        raise ConfigError(f"order must be one of {ORDERS}, got {order!r}")
    if not methods:
        raise ConfigError("no method to benchmark")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"a method is listed twice: {', '.join(methods)}")
    for m in methods:
        try:
            get_method(m)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    batch_size = batch_size or cfg.transfer.batch_size
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be positive, got {batch_size}")
    if classes < 1:
        raise ConfigError(f"--classes must be positive, got {classes}")
    configs = {m: method_config(cfg, m, (method_options or {}).get(m)) for m in methods}
    if batches is None:
        batches = [random_batch(cfg, batch_size, classes, cfg.seed)]
    batch_size = int(batches[0][0].shape[0])

    probe = MemoryProbe()
    runners = [_Runner(configs[m], m, classes, batches, probe) for m in methods]
    rows: list[dict] = []
    if order == "sequential":
        for r in runners:
            log(f"{r.method}: build, warm up ({warmup} steps), time {steps} training + {steps} inference steps")
            r.setup(warmup)
            for i in range(steps):
                r.train_step(warmup + i)
            for i in range(steps):
                r.infer_step(warmup + i)
            rows.append(r.row(batch_size))
            r.free()
            if on_round is not None:
                on_round()
    else:
        try:
            for r in runners:
                log(f"{r.method}: build, warm up ({warmup} steps)")
                r.setup(warmup)
            n = len(runners)
            # The set-ups handed each method's freed memory back to the OS; one untimed
            # round brings the allocator back to the steady state of a training run.
            log("one untimed round of every method")
            for r in runners:
                r._train(warmup)
                r._infer(warmup)
            for phase, step in (("training", _Runner.train_step), ("inference", _Runner.infer_step)):
                for i in range(steps):
                    log(f"{phase} round {i + 1}/{steps}")
                    for r in runners[i % n:] + runners[:i % n]:  # rotate the starting method
                        step(r, warmup + i)
                    if on_round is not None and phase == "training":
                        on_round()
            rows = [r.row(batch_size) for r in runners]
        finally:
            for r in runners:
                r.free()
    _add_ratios(rows)
    return rows


def _add_ratios(rows: list[dict]) -> None:
    full = next((r for r in rows if r["method"] == "full"), None)
    for r in rows:
        if full is None:
            r["ratio_to_full"] = None
            continue
        r["ratio_to_full"] = {"train": r["train_s"]["median"] / full["train_s"]["median"],
                              "infer": r["infer_s"]["median"] / full["infer_s"]["median"]}


def add_gemm_share(rows: list[dict], gemm_gflops_rate: float) -> None:
    """Add each row's achieved GFLOP/s as a share of the measured GEMM rate."""
    for r in rows:
        r["train_gemm_share"] = r["train_gflops_per_s"] / gemm_gflops_rate
        r["infer_gemm_share"] = r["infer_gflops_per_s"] / gemm_gflops_rate


# --- the text table -----------------------------------------------------------

def _fmt_count(n: int) -> str:
    return f"{n:,}"


def _fmt_mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / MIB:.1f}"


def _fmt_bytes(n: int) -> str:
    """Bytes in the unit that keeps small optimizer states readable."""
    if n >= MIB:
        return f"{n / MIB:.1f} MiB"
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} B"


def _decimals(values: Sequence[float]) -> int:
    """Decimals that give the smallest value three significant digits."""
    import math
    smallest = min((v for v in values if v > 0), default=1.0)
    return max(0, 2 - math.floor(math.log10(smallest)))


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return [line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def format_report(report: dict) -> str:
    """The plain-text report: a header, a time table and a size/memory/FLOPs table."""
    mach, setup, gemm = report["machine"], report["setup"], report["gemm"]
    rows = report["methods"]
    load = report["machine"].get("loadavg_after")
    lines = [
        f"ppadapt bench: {setup['config']} ({setup['model']}), {setup['input']}, batch {setup['batch_size']}, "
        f"{setup['classes']} classes, {setup['warmup']} warm-up + {setup['steps']} timed steps per method, "
        f"{setup['order']} order",
        f"machine: {mach['cpu']}, {mach['cores']} cores, {mach['device']}, Paddle {mach['paddle']}, "
        f"OMP_NUM_THREADS={mach['OMP_NUM_THREADS']}, load average {mach['loadavg']} before"
        + (f", {load} after" if load else ""),
        f"fp32 GEMM {'x'.join(map(str, gemm['shape']))}: {gemm['median']:.1f} GFLOP/s median of {gemm['n']} "
        f"(min {gemm['min']:.1f}, max {gemm['max']:.1f}; medians "
        + ", ".join(f"{v:.1f} {k}" for k, v in gemm["phase_medians"].items()) + ")",
    ]
    if setup.get("data_s_per_batch") is not None:
        lines.append(f"data: {setup['data_s_per_batch'] * 1e3:.1f} ms per batch to load and augment "
                     "(before the timing; not in the step times)")
    lines.append("")
    time_rows = []
    dt = _decimals([r["train_s"]["min"] for r in rows])
    di = _decimals([r["infer_s"]["min"] for r in rows])
    for r in rows:
        t, i = r["train_s"], r["infer_s"]
        ratio = r.get("ratio_to_full")
        time_rows.append([
            r["method"], f"{t['median']:.{dt}f}", f"{t['min']:.{dt}f}-{t['max']:.{dt}f}",
            f"{r['train_images_per_s']['median']:.1f}", f"{ratio['train']:.2f}" if ratio else "-",
            f"{i['median']:.{di}f}", f"{i['min']:.{di}f}-{i['max']:.{di}f}",
            f"{r['infer_images_per_s']['median']:.1f}"])
    lines += _table(["method", "train s/step", "min-max", "img/s", "x full", "infer s/batch", "min-max", "img/s"],
                    time_rows, right={1, 2, 3, 4, 5, 6, 7})
    lines.append("")
    size_rows = []
    for r in rows:
        p, m, f = r["params"], r["memory"], r["flops"]
        rss = _fmt_mib(m["peak_rss_bytes"])
        if m["peak_rss_increase_bytes"] is not None:
            rss += f" (+{_fmt_mib(m['peak_rss_increase_bytes'])})"
        size_rows.append([
            r["method"], _fmt_count(p["trainable"]), _fmt_count(p["without_head"]),
            _fmt_bytes(r["optimizer_state_bytes"]), rss, _fmt_mib(m["peak_tensor_bytes"]),
            f"{f['train'] / 1e9:.2f}", f"{f['train_over_forward']:.2f}",
            f"{r['train_gflops_per_s']:.1f}", f"{100 * r['train_gemm_share']:.0f}%"])
    lines += _table(["method", "trainable", "w/o head", "opt state", "peak RSS MiB (+incr.)", "tensors MiB",
                     "train GFLOP", "/fwd", "GFLOP/s", "of GEMM"], size_rows, right=set(range(1, 10)))
    mem_note = ("peak RSS: VmHWM over build + warm-up, reset per method; +incr. = over the RSS at the reset"
                if rows and rows[0]["memory"]["rss_source"] == "VmHWM"
                else "peak RSS: getrusage ru_maxrss, process-wide (not per method)")
    lines += ["", f"{mem_note}; tensors = peak of Paddle's allocator over the same window.",
              "train GFLOP: matmul FLOPs of forward + backward of one step (element-wise ops ignored); "
              "/fwd = over the forward's; GFLOP/s = train GFLOP / median step; of GEMM = share of the GEMM rate."]
    return "\n".join(lines)


# --- command line -------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse with the project's one-line ``error:`` and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def parse_methods(text: str) -> list[str]:
    """``"full,lora"`` -> ``["full", "lora"]`` (checked names, order kept)."""
    from ...methods import get_method
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise ConfigError(f"--methods is empty; e.g. --methods {','.join(DEFAULT_METHODS)}")
    out: list[str] = []
    for m in names:
        try:
            get_method(m)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if m not in out:
            out.append(m)
    return out


def split_method_options(overrides: list[str], methods: Sequence[str]) -> tuple[list[str], dict[str, dict]]:
    """Separate ``-o method.KEY=VALUE`` from the other overrides and give each option
    to every benchmarked method that has it (e.g. ``method.rank`` to ``lora``)."""
    from ...config import _parse_scalar
    from ...methods import get_method
    base, options = [], {m: {} for m in methods}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not (sep and key.startswith("method.")):
            base.append(item)
            continue
        name = key[len("method."):]
        if name in ("name", "options"):
            raise ConfigError(f"-o {key}: choose the methods with --methods, e.g. --methods full,lora")
        takers = [m for m in methods if name in get_method(m).options()]
        if not takers:
            raise ConfigError(f"-o {key}: none of the benchmarked methods ({', '.join(methods)}) "
                              f"has option '{name}'")
        for m in takers:
            options[m][name] = _parse_scalar(raw)
    return base, options


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bench.py", formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Time training steps and inference of tuning methods in one process.\n\n"
                            f"  python ppadapt/bench.py                  # CPU preset, {' vs '.join(DEFAULT_METHODS)}\n"
                            "  python ppadapt/bench.py --methods full,linear,lora,bitfit --steps 5\n"
                            "  python ppadapt/bench.py --data-file cifar-10-python.tar.gz --json")
    p.add_argument("--config", metavar="FILE.yaml", default=str(DEFAULT_CONFIG),
                   help="model and transfer stage (default: configs/cpu.yaml)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (bare stage keys apply to the transfer stage); "
                        "-o method.KEY=VALUE goes to the benchmarked methods that have that option")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated tuning methods (default: {','.join(DEFAULT_METHODS)}); see transfer.py "
                        "--list-methods")
    p.add_argument("--batch-size", type=int, help="images per step (default: the config's transfer.batch_size)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per method (default: 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps per method (default: 2)")
    p.add_argument("--classes", type=int, help="head size (default: 10, or the data's class count)")
    p.add_argument("--data-file", metavar="PATH",
                   help="time on real images: a CIFAR archive read with the transfer stage's classes and "
                        "augmentation (default: random input)")
    p.add_argument("--order", choices=ORDERS, default="interleaved",
                   help="interleaved: all models built, timed steps in rotating rounds (default); "
                        "sequential: one method after the other, each freed before the next")
    p.add_argument("--no-ratio", action="store_true",
                   help="do not add 'full' when it is not listed (no ratio to full fine-tuning)")
    p.add_argument("--gemm-size", type=int, default=1024, help="side of the square fp32 GEMM reference (default: 1024)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _display_path(path: str) -> str:
    """A path inside the repository as relative to it (``configs/cpu.yaml``), else as given."""
    try:
        return str(Path(path).resolve().relative_to(CONFIG_DIR.parent))
    except ValueError:
        return str(path)


def run(args: argparse.Namespace, log: Log = _quiet) -> dict:
    """Everything the command does, as a report dict (what ``--json`` prints)."""
    methods = parse_methods(args.methods)
    if not args.no_ratio and "full" not in methods:
        methods = ["full", *methods]
    for flag in ("steps", "warmup", "batch_size", "classes", "gemm_size"):
        value = getattr(args, flag)
        minimum = 1
        if value is not None and value < minimum:
            raise ConfigError(f"--{flag.replace('_', '-')} must be at least {minimum}, got {value}")
    base, options = split_method_options(args.override, methods)
    with legacy_notes(lambda note: log(f"note: {note}")):  # an older config form: one progress line
        cfg = load_config(args.config, base, stage="transfer")
    batch_size = args.batch_size or cfg.transfer.batch_size
    batches, data_s, classes = None, None, args.classes or 10
    if args.data_file:
        if not Path(args.data_file).is_file():
            raise DataError(f"data file not found: {args.data_file}")
        batches, classes, data_s = real_batches(cfg, args.data_file, batch_size, args.warmup + args.steps)
        if args.classes is not None and args.classes != classes:
            raise ConfigError(f"--classes {args.classes} does not match the {classes} classes of {args.data_file}")
    info = machine_info()
    log(f"measuring the fp32 GEMM rate ({args.gemm_size}^3), before, between the rounds and after")
    gemm_probe = GemmProbe((args.gemm_size,) * 3)
    gemm_probe.measure(10, "before")
    rows = benchmark(cfg, methods, batch_size=batch_size, steps=args.steps, warmup=args.warmup,
                     classes=classes, batches=batches, order=args.order, method_options=options,
                     on_round=lambda: gemm_probe.measure(3, "during"), log=log)
    gemm_probe.measure(10, "after")
    gemm = gemm_probe.summary()
    add_gemm_share(rows, gemm["median"])
    info["loadavg_after"] = _loadavg()
    m = cfg.model
    setup = {"config": _display_path(args.config), "overrides": list(args.override),
             "model": f"ViT dim {m.embed_dim}, depth {m.depth}, heads {m.num_heads}, patch {m.patch_size}, "
                      f"img {m.img_size}" + "".join(f", {get_method(name).modules}" for name in m.carry),
             "input": f"real images from {args.data_file}" if args.data_file else "random input",
             "batch_size": rows[0]["batch_size"], "classes": classes, "steps": args.steps,
             "warmup": args.warmup, "order": args.order, "data_s_per_batch": data_s,
             "methods": methods}
    return {"setup": setup, "machine": info, "gemm": gemm, "methods": rows}


def main(argv: Sequence[str] | None = None) -> int:
    """``python ppadapt/bench.py``: see :func:`build_parser`; exit 2 on a user error."""
    args = build_parser().parse_args(argv)
    # Paddle's own train_batch copies a tensor the way it warns users not to, every step.
    warnings.filterwarnings("ignore", message="To copy construct from a tensor")
    log = _quiet if args.quiet else (lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True))
    try:
        report = run(args, log)
    except PPAdaptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
