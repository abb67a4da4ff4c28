"""``python ppadapt/bench.py``: the command line over :func:`~ppadapt.apps.bench.runner.benchmark`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from ...config import CONFIG_DIR, legacy_notes, load_config, parse_scalar
from ...config.tuning import FREEZE
from ...errors import ConfigError, DataError
from ...training.engine import settle_device
from ...methods import get_method, method_of_flag
from ..cli import use_backbone
from ..tool import ArgumentParser, run_tool
from .probes import GemmProbe, loadavg, machine_info
from .runner import ORDERS, Log, add_gemm_share, benchmark, quiet, real_batches
from .multitask import DEFAULT_METHODS as MT_METHODS, DEFAULT_TASKS as MT_TASKS, bench_multitask, format_multitask
from .tables import format_report, model_words

DEFAULT_CONFIG = CONFIG_DIR / "cpu.yaml"
DEFAULT_METHODS = ("full", method_of_flag(FREEZE).name)  # the tutorial's comparison: full vs --freeze


def parse_methods(text: str) -> list[str]:
    """``"full,lora"`` -> ``["full", "lora"]`` (checked names, order kept)."""
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
            options[m][name] = parse_scalar(raw)
    return base, options


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="bench.py", formatter_class=argparse.RawDescriptionHelpFormatter, help_hint="--help",
        description="Time training steps and inference of tuning methods in one process.\n\n"
                    f"  python ppadapt/bench.py                  # CPU preset, {' vs '.join(DEFAULT_METHODS)}\n"
                    "  python ppadapt/bench.py --methods full,linear,lora,bitfit --steps 5\n"
                    "  python ppadapt/bench.py --data-file cifar-10-python.tar.gz --json\n"
                    "  python ppadapt/bench.py --multitask --tasks 1,5,20    # many tasks on one backbone")
    p.add_argument("--config", metavar="FILE.yaml", default=str(DEFAULT_CONFIG),
                   help="model and transfer stage (default: configs/cpu.yaml)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (bare stage keys apply to the transfer stage); "
                        "-o method.KEY=VALUE goes to the benchmarked methods that have that option")
    p.add_argument("--backbone", metavar="NAME",
                   help="a PaddleClas backbone's architecture (random weights), as transfer.py --backbone; "
                        "-o model.* applies on top (e.g. -o model.img_size=32)")
    p.add_argument("--methods", default=None,
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
    p.add_argument("--recompute", action="store_true",
                   help="also measure every method with recompute: true (each block's activations recomputed "
                        "in the backward): a row 'METHOD +rc' after each, and a table of the peak memory saved")
    p.add_argument("--no-ratio", action="store_true",
                   help="do not add 'full' when it is not listed (no ratio to full fine-tuning)")
    p.add_argument("--gemm-size", type=int, default=1024, help="side of the square fp32 GEMM reference (default: 1024)")
    p.add_argument("--multitask", action="store_true",
                   help="measure many tasks on one backbone instead: memory for --tasks task counts against "
                        "separate full models, the time to switch tasks, mixed-batch throughput (--methods: the "
                        f"adapters' methods, cycled; default {','.join(MT_METHODS)})")
    p.add_argument("--tasks", default=",".join(map(str, MT_TASKS)), metavar="N,N,...",
                   help=f"with --multitask: the task counts (default {','.join(map(str, MT_TASKS))})")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _display_path(path: str) -> str:
    """A path inside the repository as relative to it (``configs/cpu.yaml``), else as given."""
    try:
        return str(Path(path).resolve().relative_to(CONFIG_DIR.parent))
    except ValueError:
        return str(path)


def run_multitask(args: argparse.Namespace, log: Log = quiet) -> dict:
    """``--multitask``: :func:`~ppadapt.apps.bench.multitask.bench_multitask` on the config's architecture."""
    methods = parse_methods(args.methods or ",".join(MT_METHODS))
    full = [m for m in methods if m == "full"]
    if full:
        raise ConfigError("--multitask: full fine-tuning has no adapter to serve on a shared backbone; "
                          "drop it from --methods")
    try:
        counts = sorted({int(n) for n in args.tasks.split(",") if n.strip()})
    except ValueError:
        raise ConfigError(f"--tasks must be task counts like 1,5,20, got {args.tasks!r}") from None
    if not counts or counts[0] < 1:
        raise ConfigError(f"--tasks must be positive task counts like 1,5,20, got {args.tasks!r}")
    for flag in ("steps", "warmup", "batch_size", "classes"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    base, options = split_method_options(args.override, methods)
    cfg = _config(args, base, log)
    report = bench_multitask(cfg.model.architecture(), counts=counts, methods=methods, options=options,
                             classes=args.classes or 10, batch_size=args.batch_size or cfg.transfer.batch_size,
                             steps=args.steps, warmup=args.warmup, log=log)
    report["setup"]["config"] = _display_path(args.config)
    report["machine"]["loadavg_after"] = loadavg()
    return report


def _config(args: argparse.Namespace, overrides: list[str], log: Log):
    """The config to measure: ``--config`` with the ``-o`` overrides, and ``--backbone``'s architecture
    (whose ``-o model.*`` overrides apply on top of it, as with ``transfer.py``)."""
    first = [o for o in overrides if not o.strip().startswith("model.")] if args.backbone else overrides
    with legacy_notes(lambda note: log(f"note: {note}")):  # an older config form: one progress line
        cfg = load_config(args.config, first, stage="transfer")
    if args.backbone:
        use_backbone(cfg, args.backbone, overrides)
    return cfg


def run(args: argparse.Namespace, log: Log = quiet) -> dict:
    """Everything the command does, as a report dict (what ``--json`` prints)."""
    methods = parse_methods(args.methods or ",".join(DEFAULT_METHODS))
    if not args.no_ratio and "full" not in methods:
        methods = ["full", *methods]
    for flag in ("steps", "warmup", "batch_size", "classes", "gemm_size"):
        value = getattr(args, flag)
        minimum = 1
        if value is not None and value < minimum:
            raise ConfigError(f"--{flag.replace('_', '-')} must be at least {minimum}, got {value}")
    base, options = split_method_options(args.override, methods)
    cfg = _config(args, base, log)
    settle_device(cfg, "transfer")  # -o device=gpu, -o amp=O1: as transfer.py checks them
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
                     on_round=lambda: gemm_probe.measure(3, "during"), log=log, recompute_too=args.recompute)
    gemm_probe.measure(10, "after")
    gemm = gemm_probe.summary()
    add_gemm_share(rows, gemm["median"])
    info["loadavg_after"] = loadavg()
    m = cfg.model
    setup = {"config": _display_path(args.config), "overrides": list(args.override),
             "model": model_words(m.architecture()) + "".join(f", {get_method(name).modules}" for name in m.carry),
             "input": f"real images from {args.data_file}" if args.data_file else "random input",
             "batch_size": rows[0]["batch_size"], "classes": classes, "steps": args.steps,
             "warmup": args.warmup, "order": args.order, "data_s_per_batch": data_s,
             "methods": methods, "recompute": "both" if args.recompute else bool(cfg.transfer.recompute),
             "layers": rows[0]["layers"], "amp": rows[0]["amp"]}
    return {"setup": setup, "machine": info, "gemm": gemm, "methods": rows}


def main(argv: Sequence[str] | None = None) -> int:
    """``python ppadapt/bench.py``: see :func:`build_parser`; exit 2 on a user error."""
    args = build_parser().parse_args(argv)
    log = quiet if args.quiet else (lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True))

    def measure() -> int:
        if args.multitask:
            report = run_multitask(args, log)
            print(json.dumps(report, indent=2) if args.json else format_multitask(report))
            return 0
        report = run(args, log)
        print(json.dumps(report, indent=2) if args.json else format_report(report))
        return 0
    return run_tool(measure, interrupted="interrupted")
