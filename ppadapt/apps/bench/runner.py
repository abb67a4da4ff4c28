"""Building each method's model as ``transfer.py`` does and timing its steps: :func:`benchmark`."""
from __future__ import annotations

import copy
import gc
import time
from typing import Callable, Sequence

import numpy as np
import paddle

from ...config import Config, validate
from ...data import build_datasets
from ...data.transforms import Pipeline
from ...errors import ConfigError, DataError
from ...methods import get_method
from ...methods.build import apply_transfer_method, build_model
from ...methods.trainable import count_parameters
from ...training.engine import configure_training, seed_everything
from ...training.loss import make_loss
from ...training.precision import stage_network
from .flops import train_step_flops
from .probes import MemoryProbe, malloc_trim, optimizer_state_bytes, sync
from .stats import rate, summarize

ORDERS = ("interleaved", "sequential")

Log = Callable[[str], None]


def quiet(msg: str) -> None:
    """A log that drops every line."""


# --- inputs -------------------------------------------------------------------

def random_batch(cfg: Config, batch_size: int, classes: int, seed: int = 0) -> tuple:
    """One batch of standard-normal images and uniform labels (Paddle tensors)."""
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
    st = cfg.transfer
    if st.dataset not in ("cifar10", "cifar100"):
        raise ConfigError(f"--data-file needs transfer.dataset cifar10 or cifar100, got {st.dataset!r} "
                          "(pass -o transfer.dataset=cifar10 or cifar100)")
    data = build_datasets(st.dataset, role="transfer", img_size=cfg.model.img_size, data_file=data_file,
                          classes=st.classes, augment=st.augment,
                          pipeline=Pipeline(st.augmentation, st.eval_resize))  # at model.img_size (no BiT rule)
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

def method_config(cfg: Config, method: str, options: dict | None = None, recompute: bool | None = None) -> Config:
    """``cfg`` with the transfer stage set to ``method`` (and its options), checked;
    ``recompute``: the stage's ``recompute`` (None: the config's)."""
    c = copy.deepcopy(cfg)
    c.method.name = method
    c.method.options = dict(options or {})
    c.transfer.freeze = False
    if recompute is not None:
        c.transfer.recompute = recompute
    try:
        validate(c)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return c


class _Runner:
    """One method's model, prepared exactly as ``transfer.py`` prepares it (its layer path,
    ``recompute`` and mixed precision included)."""

    def __init__(self, cfg: Config, method: str, classes: int, batches: list, probe: MemoryProbe):
        self.cfg, self.method, self.classes, self.batches, self.probe = cfg, method, classes, batches, probe
        self.recompute = bool(cfg.transfer.recompute)
        self.label = f"{method} +rc" if self.recompute else method
        self.train_s: list[float] = []
        self.infer_s: list[float] = []
        self.warmup_train_s: list[float] = []

    def setup(self, warmup: int) -> None:
        """Build, count, warm up (training and inference), and measure memory over it."""
        cfg = self.cfg
        self.probe.reset()
        seed_everything(cfg.seed)
        model = build_model(cfg, self.classes)
        apply_transfer_method(model, cfg)
        self.layers = configure_training(model, cfg, "transfer")
        self.params = count_parameters(model)
        net, optimizer, _ = stage_network(model, cfg, "transfer", self.method)
        net.prepare(optimizer, make_loss(cfg, "transfer"),
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
        sync()
        return time.perf_counter() - t0

    def _infer(self, i: int) -> float:
        x, _ = self.batches[i % len(self.batches)]
        t0 = time.perf_counter()
        self.net.predict_batch([x])
        sync()
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
        malloc_trim()

    def row(self, batch_size: int) -> dict:
        p = self.params
        train, infer = summarize(self.train_s), summarize(self.infer_s)
        forward = self.flops.forward
        return {
            "method": self.method,
            "label": self.label,
            "recompute": self.recompute,
            "layers": self.layers,
            "amp": self.cfg.transfer.amp if self.cfg.transfer.amp == "off" else
            f"{self.cfg.transfer.amp} {self.cfg.transfer.amp_dtype}",
            "options": dict(self.cfg.method.options),
            "batch_size": batch_size,
            "params": {"trainable": p.trainable, "without_head": p.without_head, "head": p.head,
                       "total": p.total, "trainable_bytes": p.trainable_bytes},
            "optimizer_state_bytes": self.optimizer_bytes,
            "train_s": train, "train_images_per_s": rate(batch_size, train),
            "infer_s": infer, "infer_images_per_s": rate(batch_size, infer),
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
              on_round: Callable[[], None] | None = None, log: Log = quiet,
              recompute_too: bool = False) -> list[dict]:
    """Time training and inference steps of each method; one dict per method.

    ``cfg`` gives the model and the transfer stage (optimizer, batch size);
    ``batches`` is a list of ``(images, labels)`` tensors cycled through (default:
    one random batch). Every row has the step-time statistics, images/s,
    memory, parameter counts, optimizer-state bytes, FLOPs and achieved GFLOP/s,
    and ``ratio_to_full`` (train and inference median over full fine-tuning's)
    when ``full`` is among ``methods``. ``on_round`` is called after every timed
    training round (interleaved) or after each method (sequential), e.g. to sample
    the GEMM rate under the same load. ``recompute_too``: every method also with
    ``recompute: true`` (a row labelled ``METHOD +rc`` after each), to compare peak memory.
    """
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
    variants = [(m, None) for m in methods] if not recompute_too else \
        [(m, rc) for m in methods for rc in (False, True)]
    configs = [(m, method_config(cfg, m, (method_options or {}).get(m), rc)) for m, rc in variants]
    if batches is None:
        batches = [random_batch(cfg, batch_size, classes, cfg.seed)]
    batch_size = int(batches[0][0].shape[0])

    probe = MemoryProbe()
    runners = [_Runner(c, m, classes, batches, probe) for m, c in configs]
    rows: list[dict] = []
    if order == "sequential":
        for r in runners:
            log(f"{r.label}: build, warm up ({warmup} steps), time {steps} training + {steps} inference steps")
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
                log(f"{r.label}: build, warm up ({warmup} steps)")
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
    full = next((r for r in rows if r["method"] == "full" and r["label"] == "full"), None) or \
        next((r for r in rows if r["method"] == "full"), None)
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

