"""Choosing hyper-parameters without the test set: ``python ppadapt/tune.py``.

For every method of ``--methods``:

1. **grid**: every combination of the ``--grid KEY=V1,V2,...`` values trains on the
   training set minus a stratified validation split (``--val-split``, default 0.1, seeded
   by the config's seed) and is scored on that split: the validation top-1 of its final
   epoch (``--score final``, the default: the fixed schedule the retraining runs and
   reports), or of its best validation epoch (``--score best``). Ties go to the lower
   final validation loss, then to the earlier point of the grid.
2. **retraining**: the chosen point trains again on the full training set (``val_split``
   0), once per seed (the config's seed, +1, +2, ...: ``--seeds N``), evaluated on test.
   The number reported is the test top-1 of the *final* epoch, mean ± sample standard
   deviation over the seeds: these runs have no validation split, so their "best" epoch
   is chosen on the test set and is not used here.

Every run is an ordinary run folder (run.json, checkpoints, VisualDL logs, ``report.py``):

    OUTPUT/tune/<method>/grid/<point>_transfer_<dataset>_<suffix>
    OUTPUT/tune/<method>/seeds/<point>_seed<N>_transfer_<dataset>_<suffix>

``<point>`` is the setting, e.g. ``lr=0.01,weight_decay=0`` (``default`` with no
``--grid``); a seed run's folder names its setting too, so a wider grid that chooses
another point trains new seed runs beside the old ones. Running the same command again skips each run whose run.json says it
finished, resumes an unfinished one from its ``resume.pdckpt`` (restarts it when it has
none yet), and refuses a folder that holds a run with other settings. Runs train in this
process, one config each, through :func:`ppadapt.training.engine.run_stage`.
"""
from __future__ import annotations

import argparse
import copy
import csv
import io
import itertools
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..config import Config, config_from_dict, parse_scalar, set_value, transfer_method, validate
from ..config.flags import FLAGS
from ..config.schema import StageConfig, field_names
from ..config.tuning import FREEZE
from ..errors import ConfigError, TrainingInterrupted
from ..methods import method_of_flag
from ..runs.layout import default_pretrained, run_dir
from ..runs.record import RUN_RECORD, RunRecord, read_record
from ..runs.resume_file import RESUME_FILE
from ..training.engine import run_stage
from ..training.resume import RESUME_OVERRIDABLE, flat_config
from .cli import DATASET_CHOICES, add_device_flag, load_tool_config
from .report import ppt
from .tool import ArgumentParser, run_tool

STAGE = "transfer"
SCORES = ("final", "best")
# Keys the tool sets itself, and the option that sets them.
OWN_KEYS = {"seed": "--seed", "output": "--output", "name": "the tool (folder names)",
            f"{STAGE}.val_split": "--val-split", f"{STAGE}.val_dir": "--val-split",
            "method.name": "--methods", f"{STAGE}.freeze": "--methods"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")


@dataclass(frozen=True)
class Point:
    """One setting of the grid: ``items`` are its ``KEY=VALUE`` overrides."""

    label: str
    items: tuple[str, ...] = ()


@dataclass
class MethodResult:
    """A method's grid scores, its chosen point and the test top-1 of its seed runs (percent)."""

    method: str
    grid: list[dict] = field(default_factory=list)
    chosen: Point | None = None
    seeds: list[dict] = field(default_factory=list)
    params_without_head: int | None = None

    @property
    def test_top1(self) -> list[float]:
        return [s["test_top1"] for s in self.seeds if s["test_top1"] is not None]

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.test_top1) if self.test_top1 else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over the seeds (None with fewer than 2)."""
        return statistics.stdev(self.test_top1) if len(self.test_top1) > 1 else None

    @property
    def ppt(self) -> float | None:
        if self.mean is None or self.params_without_head is None:
            return None
        return ppt(self.mean, self.params_without_head)

    @property
    def chosen_row(self) -> dict:
        return next(g for g in self.grid if g["point"] == self.chosen.label)


# --- the grid -------------------------------------------------------------------------

def canonical_key(key: str) -> str:
    """``lr`` -> ``transfer.lr`` (a bare stage key is the transfer stage's), others as given."""
    if "." not in key and key not in field_names(Config) and key in field_names(StageConfig):
        return f"{STAGE}.{key}"
    return key


def check_not_owned(key: str, where: str) -> None:
    owner = OWN_KEYS.get(canonical_key(key))
    if owner:
        raise ConfigError(f"{where} {key}: tune.py sets {canonical_key(key)} itself (use {owner})")


def parse_grid(specs: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["lr=1e-3,3e-3", "weight_decay=0,0.05"]`` -> ``[("lr", ["1e-3", "3e-3"]), ...]``, each
    key and value checked (an unknown key, a mistyped value: one ConfigError line)."""
    axes: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    for spec in specs:
        key, sep, raw = spec.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--grid {spec!r} is not KEY=V1,V2,... (e.g. --grid lr=0.01,0.03)")
        values = [v.strip() for v in raw.split(",")]
        if any(not v for v in values):
            raise ConfigError(f"--grid {spec!r} has an empty value (give KEY=V1,V2,..., e.g. --grid {key}=0.01,0.03)")
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise ConfigError(f"--grid {key} lists {', '.join(twice)} twice (give each value once)")
        if canonical_key(key) in seen:
            raise ConfigError(f"--grid {key} is given twice (put all its values in one --grid {key}=V1,V2,...)")
        check_not_owned(key, "--grid")
        for value in values:  # unknown keys and mistyped values, named as --grid's
            set_value(Config(), key, parse_scalar(value), stage=STAGE, source="--grid")
        seen.add(canonical_key(key))
        axes.append((key, values))
    return axes


def grid_points(axes: Sequence[tuple[str, list[str]]]) -> list[Point]:
    """Every combination of the axes' values, in order (the first axis varies slowest)."""
    if not axes:
        return [Point("default")]
    points = []
    for combo in itertools.product(*(values for _, values in axes)):
        items = tuple(f"{key}={value}" for (key, _), value in zip(axes, combo))
        points.append(Point(_UNSAFE.sub("_", ",".join(items)), items))
    labels = [p.label for p in points]
    clash = sorted({label for label in labels if labels.count(label) > 1})
    if clash:
        raise ConfigError(f"--grid values give the same folder name {clash[0]!r} to two points (use values that "
                          "differ in letters, digits or . _ = , + -)")
    return points


# --- one run ---------------------------------------------------------------------------

def run_config(args: argparse.Namespace, method: str, items: Sequence[str], *, seed: int, val_split: float,
               output: Path, name: str) -> Config:
    """The config of one run: the command line's, the method, the point's overrides, and the
    tool's own keys (seed, validation split, where the run goes)."""
    ns = copy.copy(args)
    ns.method, ns.override = method, [*args.override, *items]
    cfg = load_tool_config(ns, STAGE, args.dataset)
    if cfg.transfer.pretrained is None:  # the pretraining run of the config, found before output/name change
        cfg.transfer.pretrained = str(default_pretrained(cfg))
    cfg.seed, cfg.transfer.val_split, cfg.output, cfg.name = seed, val_split, str(output), name
    validate(cfg)
    return cfg


def check_same_settings(folder: Path, record: RunRecord, cfg: Config) -> None:
    """A folder this tool would skip or resume must hold a run of the same settings (the
    place of the data, the loader workers and the log frequency may differ)."""
    ignored = {"output", "name"} | {f"{STAGE}.{k}" for k in RESUME_OVERRIDABLE}
    saved = flat_config(config_from_dict(record.config or {}, source=str(folder / RUN_RECORD)).to_dict())
    mine = flat_config(cfg.to_dict())
    for key in sorted(set(saved) | set(mine)):
        if key.startswith("pretrain.") or key in ignored:
            continue
        if saved.get(key) != mine.get(key):
            raise ConfigError(f"{folder} holds a run with other settings ({key} is {saved.get(key)!r} there, "
                              f"{mine.get(key)!r} now): remove that folder, or pass another --output")


def ensure_run(cfg: Config, *, log: Callable[[str], None], verbose: int,
               callbacks: Sequence = ()) -> tuple[RunRecord, str]:
    """The finished run of ``cfg``: skipped when its folder's run.json says it finished,
    resumed from its resume.pdckpt when it stopped part-way, else trained. Returns its
    record and ``"skipped"``/``"resumed"``/``"trained"``."""
    folder = run_dir(cfg, STAGE)
    resume, status = None, "trained"
    if (folder / RUN_RECORD).is_file():
        record = read_record(folder)
        check_same_settings(folder, record, cfg)
        if record.final is not None:
            return record, "skipped"
        if (folder / RESUME_FILE).is_file():
            resume, status = folder, "resumed"
    try:
        run_stage(cfg, STAGE, log=log, verbose=verbose, resume=resume, callbacks=callbacks)
    except TrainingInterrupted as exc:
        raise TrainingInterrupted(f"{exc}; or run the same tune.py command again: finished runs are skipped "
                                  "and this one continues") from None
    return read_record(folder), status


# --- the search ------------------------------------------------------------------------

def _percent(entry: dict | None, key: str) -> float | None:
    value = (entry or {}).get(key)
    return None if value is None else 100.0 * float(value)


def tune(args: argparse.Namespace, methods: Sequence[str], points: Sequence[Point], *,
         say: Callable[[str], None] = print, callbacks: Sequence = ()) -> list[MethodResult]:
    """The grid and the seed runs of every method (see the module doc)."""
    base = load_tool_config(args, STAGE, args.dataset)  # the command line's seed and output
    base_seed, root = base.seed, Path(base.output) / "tune"
    run_log = (lambda line: None) if args.quiet else print
    verbose = 0 if args.quiet else 2
    seeds = [base_seed + i for i in range(args.seeds)]
    say(f"tune: {len(methods)} method(s) x {len(points)} grid point(s) scored on val_split {args.val_split:g} "
        f"({args.score} epoch), then seeds {', '.join(map(str, seeds))} on the full training set; runs in {root}")
    results = []
    for method in methods:
        result = MethodResult(method)
        for i, point in enumerate(points, 1):
            cfg = run_config(args, method, point.items, seed=base_seed, val_split=args.val_split,
                             output=root / method / "grid", name=point.label)
            say(f"tune: {method} grid {i}/{len(points)} {point.label}: {run_dir(cfg, STAGE)}")
            record, status = ensure_run(cfg, log=run_log, verbose=verbose, callbacks=callbacks)
            entry = record.final if args.score == "final" else record.best
            result.grid.append({"point": point.label, "setting": dict(item.split("=", 1) for item in point.items),
                                "run_dir": str(run_dir(cfg, STAGE)), "status": status,
                                "val_top1": _percent(entry, "val_acc_top1"),
                                "val_top1_final": _percent(record.final, "val_acc_top1"),
                                "val_top1_best": _percent(record.best, "val_acc_top1"),
                                "val_loss_final": (record.final or {}).get("val_loss")})
            say(f"tune: {method} grid {i}/{len(points)} {point.label}: {status}, val top-1 "
                f"{_fmt(result.grid[-1]['val_top1'], '.2f')}% ({args.score} epoch)")
        order = sorted(range(len(points)), key=lambda k: _rank(result.grid[k], k))
        result.chosen = points[order[0]]
        say(f"tune: {method}: chose {result.chosen.label}")
        for j, seed in enumerate(seeds, 1):
            cfg = run_config(args, method, result.chosen.items, seed=seed, val_split=0.0,
                             output=root / method / "seeds", name=f"{result.chosen.label}_seed{seed}")
            record, status = ensure_run(cfg, log=run_log, verbose=verbose, callbacks=callbacks)
            if record.params:
                result.params_without_head = int(record.params.get("without_head",
                                                                   record.params.get("trainable", 0)))
            result.seeds.append({"seed": seed, "run_dir": str(run_dir(cfg, STAGE)), "status": status,
                                 "test_top1": _percent(record.final, "acc_top1")})
            say(f"tune: {method} seed {j}/{len(seeds)} ({seed}): {status}, final test top-1 "
                f"{_fmt(result.seeds[-1]['test_top1'], '.2f')}%")
        results.append(result)
    return results


def _rank(row: dict, index: int) -> tuple:
    """Sort key of a grid point: best score first, then lower final val loss, then grid order."""
    score, loss = row["val_top1"], row["val_loss_final"]
    return (score is None, -(score or 0.0), math.inf if loss is None else loss, index)


# --- output ----------------------------------------------------------------------------

def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def grid_table(results: Sequence[MethodResult], score: str) -> str:
    rows = ["| method | setting | val top-1 | val loss (final) | |", "| --- | --- | ---: | ---: | --- |"]
    for r in results:
        for g in r.grid:
            rows.append(f"| {r.method} | {g['point']} | {_fmt(g['val_top1'], '.2f')} | "
                        f"{_fmt(g['val_loss_final'], '.4f')} | {'chosen' if g['point'] == r.chosen.label else ''} |")
    return f"grid: validation top-1 ({score} epoch) of each setting\n\n" + "\n".join(rows)


def result_table(results: Sequence[MethodResult]) -> str:
    rows = ["| method | chosen setting | val top-1 | test top-1 (final, mean ± std) | seeds | params (w/o head) "
            "| PPT |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        test = "-" if r.mean is None else f"{r.mean:.2f}" + ("" if r.std is None else f" ± {r.std:.2f}")
        params = "-" if r.params_without_head is None else f"{r.params_without_head:,}"
        rows.append(f"| {r.method} | {r.chosen.label} | {_fmt(r.chosen_row['val_top1'], '.2f')} | {test} | "
                    f"{len(r.test_top1)} | {params} | {_fmt(r.ppt, '.2f')} |")
    note = ("test top-1: the final epoch of the chosen setting retrained on the full training set, one run per "
            "seed (± the sample standard deviation); the setting was chosen on the validation split only. "
            "PPT = mean test top-1/100 * exp(-log10(P/1e7 + 1)), P = trainable parameters without the head.")
    return "\n".join(rows + ["", note])


def as_json(results: Sequence[MethodResult], args: argparse.Namespace) -> dict:
    return {"score": args.score, "val_split": args.val_split,
            "methods": {r.method: {"grid": r.grid, "chosen": r.chosen.label,
                                   "setting": dict(item.split("=", 1) for item in r.chosen.items), "seeds": r.seeds,
                                   "test_top1_mean": r.mean, "test_top1_std": r.std,
                                   "params_without_head": r.params_without_head, "ppt": r.ppt}
                        for r in results}}


CSV_FIELDS = ("method", "chosen", "val_top1", "test_top1_mean", "test_top1_std", "seeds", "params_without_head",
              "ppt", "test_top1_per_seed")


def as_csv(results: Sequence[MethodResult]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r in results:
        row = [r.method, r.chosen.label, r.chosen_row["val_top1"], r.mean, r.std, len(r.test_top1),
               r.params_without_head, r.ppt, " ".join(f"{v!r}" for v in r.test_top1)]
        writer.writerow(["" if v is None else v for v in row])
    return out.getvalue()


# --- command line ----------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="tune.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Choose hyper-parameters per method on a validation split, then report the chosen setting's "
                    "test top-1 over several seeds.\n\n"
                    f"  python ppadapt/tune.py --dataset digits --methods linear,{method_of_flag(FREEZE).name},lora \\\n"
                    "      --grid lr=0.01,0.03,0.1 --grid weight_decay=0,5e-4 --seeds 3\n\n"
                    "Each grid point trains on the training set minus --val-split and is scored there; the chosen "
                    "one is retrained on the full training set once per seed and its final test top-1 reported. "
                    "Run it again to skip finished runs and continue an interrupted one.")
    p.add_argument("--methods", metavar="A,B,...",
                   help="tuning methods, comma-separated (see transfer.py --list-methods; default: the config's)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="values of a config key to try (bare stage keys are the transfer stage's), e.g. "
                        "--grid lr=1e-3,3e-3,1e-2 --grid weight_decay=0,0.05 --grid method.rank=4,8; every "
                        "combination is a point")
    p.add_argument("--seeds", type=int, default=3, metavar="N",
                   help="retraining runs of the chosen setting: seeds S, S+1, ... (S: --seed or the config's; "
                        "default 3)")
    p.add_argument("--val-split", type=float, default=0.1, metavar="F",
                   help="share of each class's training images held out to score the grid (default 0.1)")
    p.add_argument("--score", choices=SCORES, default="final",
                   help="a grid point's score: validation top-1 of the final epoch (default) or the best epoch")
    p.add_argument("--config", metavar="FILE.yaml",
                   help="experiment protocol (default: configs/tutorial.yaml; configs/digits.yaml with "
                        "--dataset digits)")
    p.add_argument("--dataset", choices=DATASET_CHOICES, help="downstream dataset (default: the config's)")
    p.add_argument("--data-file", metavar="PATH", help="local cifar-10-python.tar.gz / cifar-100-python.tar.gz")
    p.add_argument("--data-dir", metavar="DIR", help="image folder with DIR/train/<class>/*, DIR/test/<class>/*")
    p.add_argument("--pretrained", metavar="CKPT",
                   help="backbone checkpoint (as transfer.py; default: the config's pretraining run; 'none': "
                        "from scratch)")
    p.add_argument("--backbone", metavar="NAME", help="a PaddleClas backbone (a ViT or a Swin), as transfer.py --backbone")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int, help="seed of the grid runs and of the first retraining run")
    add_device_flag(p)
    p.add_argument("--output", metavar="DIR", help="root of the runs: they go to DIR/tune/<method>/ (default: output)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key for every run, e.g. -o model.depth=6 -o warmup_steps=10")
    p.add_argument("--json", metavar="FILE", help="also write the grid scores, choices and seed results as JSON")
    p.add_argument("--csv", metavar="FILE", help="also write the result table as CSV (raw numbers)")
    p.add_argument("--quiet", action="store_true", help="only tune.py's own lines, not each run's log")
    return p


def check_args(args: argparse.Namespace) -> tuple[list[str], list[Point]]:
    """The methods and grid points of the command line; each bad input one ConfigError line."""
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
    if not 0.0 < args.val_split < 1.0:
        raise ConfigError(f"--val-split must be in (0, 1), got {args.val_split:g}: the grid is scored on this "
                          "share of the training images (e.g. --val-split 0.1)")
    for item in args.override:
        check_not_owned(item.partition("=")[0].strip(), "-o")
    base = load_tool_config(args, STAGE, args.dataset)  # the config itself, before any run
    if args.methods is None:
        methods = [transfer_method(base)]
    else:
        methods = [m.strip() for m in args.methods.split(",")]
        if not all(methods):
            raise ConfigError(f"--methods {args.methods!r} has an empty name (give A,B,..., e.g. "
                              "--methods linear,lora)")
        twice = sorted({m for m in methods if methods.count(m) > 1})
        if twice:
            raise ConfigError(f"--methods lists {', '.join(twice)} twice")
    axes = parse_grid(args.grid)
    for key, _ in axes:  # a flag would silently win over the grid's values
        flag = next((f for f in FLAGS if f.key.format(stage=STAGE) == canonical_key(key)
                     and getattr(args, f.dest, None) not in (None, False)), None)
        if flag is not None:
            raise ConfigError(f"--grid {key} and --{flag.dest.replace('_', '-')} both set {canonical_key(key)}: "
                              "drop one")
    points = grid_points(axes)
    for method in methods:  # every method's every point is a valid config before anything trains
        for point in points:
            run_config(args, method, point.items, seed=base.seed, val_split=args.val_split, output=Path(base.output),
                       name=point.label)
    return methods, points


def tune_main(argv: Sequence[str] | None = None, callbacks: Sequence = ()) -> int:
    """Entry point of ``tune.py``; ``callbacks``: extra ``paddle.callbacks.Callback`` objects for every run."""
    args = build_parser().parse_args(argv)

    def main() -> int:
        methods, points = check_args(args)
        results = tune(args, methods, points, callbacks=callbacks)
        print()
        print(grid_table(results, args.score))
        print()
        print(result_table(results))
        if args.json:
            _write(Path(args.json), json.dumps(as_json(results, args), indent=2) + "\n")
        if args.csv:
            _write(Path(args.csv), as_csv(results))
        return 0
    return run_tool(main, notes="stdout")


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc} (pass a file in a folder you can write to)") \
            from None


__all__ = ["MethodResult", "Point", "ensure_run", "grid_points", "parse_grid", "run_config", "tune", "tune_main"]
