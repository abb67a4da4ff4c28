"""Before/after table of the CPU speed work (issue 4), measured in one process.

Each stage adds one change on top of the previous ones; all stages are timed in
interleaved rounds so machine-load drift hits them alike. Stages are switched at
run time: Paddle's stride-kernel flag, glibc's malloc thresholds (back to glibc's
defaults for "before"), and ppadapt's fast Linear/LayerNorm (off = Paddle's own
ops, whose LayerNorm gradient is wrong under a frozen scale: timing only).

    python tools/speed_stages.py [--rounds 5] [--batch-size 64]
"""
from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ppadapt  # noqa: E402,F401  (first: its thread settings only work before Paddle is imported)
import numpy as np  # noqa: E402
import paddle  # noqa: E402
import paddle.nn as nn  # noqa: E402

from ppadapt.methods.build import apply_transfer_method, build_model  # noqa: E402
from ppadapt.training.optim import make_optimizer  # noqa: E402
from ppadapt.utils import runtime  # noqa: E402
from ppadapt.config import load_config  # noqa: E402
from ppadapt.models import fast_layers  # noqa: E402

_libc = ctypes.CDLL("libc.so.6")
_fast_path = fast_layers._wants_fast_path
_fast_ln = fast_layers.LayerNorm.forward


def _malloc(tuned: bool) -> None:
    if tuned:
        runtime._keep_freed_memory()
    else:  # glibc's defaults: 128 KiB mmap threshold, trim threshold and top pad
        for param in (runtime._M_MMAP_THRESHOLD, runtime._M_TRIM_THRESHOLD, runtime._M_TOP_PAD):
            _libc.mallopt(param, 128 * 1024)
        _libc.malloc_trim(0)


def _stage(stride_off: bool, malloc: bool, linear: bool, layernorm: bool) -> None:
    paddle.set_flags({"FLAGS_use_stride_kernel": not stride_off})
    _malloc(malloc)
    fast_layers._wants_fast_path = _fast_path if linear else (lambda *t: False)
    fast_layers.LayerNorm.forward = _fast_ln if layernorm else nn.LayerNorm.forward


STAGES = {
    "Paddle defaults (threads+MKL set)": (False, False, False, False),
    "+ stride kernels off": (True, False, False, False),
    "+ malloc keeps freed memory": (True, True, False, False),
    "+ Linear: GEMV bias grad, addmm": (True, True, True, False),
    "+ LayerNorm: own backward": (True, True, True, True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    nets = {}
    for method in ("full", "adaptformer"):
        cfg = load_config(os.path.join(root, "configs/cpu.yaml"), [f"method.name={method}"], stage="transfer")
        paddle.seed(0)
        model = build_model(cfg, 10)
        apply_transfer_method(model, cfg)
        net = paddle.Model(model)
        net.prepare(make_optimizer(model, cfg, "transfer"), paddle.nn.CrossEntropyLoss(),
                    paddle.metric.Accuracy(topk=(1, 5)))
        nets[method] = net
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch_size, 3, 32, 32)).astype("float32")
    y = rng.integers(0, 10, (args.batch_size, 1)).astype("int64")
    times = {(s, m): [] for s in STAGES for m in nets}
    for r in range(args.rounds + 1):  # round 0 warms every stage up
        for stage, switches in STAGES.items():
            _stage(*switches)
            for method, net in nets.items():
                start = time.perf_counter()
                net.train_batch([x], [y])
                if r:
                    times[(stage, method)].append(time.perf_counter() - start)
    print(f"CPU preset ViT (192/6/3, patch 4, 32 px), batch {args.batch_size}, "
          f"median of {args.rounds} interleaved rounds; load average {os.getloadavg()[0]:.2f}")
    print("| stage | full s/step | AdaptFormer frozen s/step | frozen/full | full speed-up |")
    print("| --- | ---: | ---: | ---: | ---: |")
    first = None
    for stage in STAGES:
        full = statistics.median(times[(stage, "full")])
        frozen = statistics.median(times[(stage, "adaptformer")])
        first = first or full
        print(f"| {stage} | {full:.3f} | {frozen:.3f} | {frozen / full:.2f} | {first / full:.2f}x |")


if __name__ == "__main__":
    main()
