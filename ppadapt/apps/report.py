"""Compare finished runs: a V-PETL Bench-style table, and their curves in one PNG.

``python ppadapt/report.py`` is a thin command line over :func:`report_main`. A
run is a folder holding the ``run.json`` that
:class:`ppadapt.training.callbacks.BestAndFinalCheckpoint` writes; everything in the table
comes from that record and the files beside it, so a report never loads Paddle
weights or reruns anything.

The table follows V-PETL Bench (Xin et al., 2024): trainable parameters *without
the classifier head* (its "Params" column: the head is the same for every method)
and PPT, the Performance-Parameter Trade-off,
``PPT = top1/100 * exp(-log10(P / 1e7 + 1))``. Here PPT uses the *best* eval top-1
of the run (the number its ``best.pdparams`` holds).

"Best" is the test top-1 at the epoch the run chose: on its validation split
(``val_split``/``val_dir``, run.json ``selected_on: "val"``), or on the test set itself
(no validation split, and every record written before ``selected_on``: an optimistic
number). The table's header and the note under it say which, per run when they differ.

Older ``run.json`` files (before the method name and the head count were recorded)
still report: the method is read from the config (``transfer.freeze`` means
AdaptFormer) and the head is counted from the model width and the class names.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..config.tuning import FREEZE
from ..errors import CheckpointError, ConfigError, DataError, PPAdaptError
from ..methods import method_of_flag
from ..runs.adapter_file import ADAPTER_DIR, LEGACY_FILE, TENSORS_FILE
from ..runs.record import RUN_RECORD, RunRecord, read_record
from ..utils.formatting import format_size
from .tool import ArgumentParser, run_tool
from .vdl import Panel, log_files, plot_runs

PPT_SCALE = 1e7  # V-PETL Bench's normalising constant C
SORT_KEYS = ("ppt", "top1", "name")
STAGES = ("pretrain", "transfer")
PPT_NOTE = ("PPT = best top-1/100 * exp(-log10(P/1e7 + 1)), P = trainable parameters "
            "without the head (V-PETL Bench); sizes in decimal units (1 MB = 10^6 bytes).")


def ppt(top1_percent: float, params: int) -> float:
    """V-PETL Bench's Performance-Parameter Trade-off of a run.

    One number that rewards accuracy and penalises trainable parameters
    logarithmically, so methods of very different sizes can be ranked together:
    ``top1_percent / 100 * exp(-log10(params / 1e7 + 1))``. ``params`` excludes
    the classifier head, as in the benchmark. 88.02% with 0.10 M parameters gives
    0.876 (published: 0.88); a linear probe (0 parameters) keeps its accuracy.
    """
    if params < 0:
        raise ValueError(f"parameter count must be >= 0, got {params}")
    return top1_percent / 100.0 * math.exp(-math.log10(params / PPT_SCALE + 1.0))


@dataclass(frozen=True)
class RunSummary:
    """What the report shows of one run, read from its ``run.json`` and files.

    Accuracies are percentages; ``None`` where the run has no such value (no
    evaluation yet, or not finished).
    """

    run_dir: Path
    stage: str
    method: str
    dataset: str
    trainable: int
    total: int
    head: int | None
    top1_best: float | None
    best_epoch: int | None
    top1_final: float | None
    finished: bool
    epochs_done: int
    epochs: int | None
    seconds_per_epoch: float | None
    checkpoint: Path | None
    checkpoint_bytes: int | None
    selected_on: str = "test"  # the split that chose the best epoch
    top1_val_best: float | None = None  # validation top-1 at that epoch (selected on val)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def without_head(self) -> int | None:
        """Trainable parameters excluding the head: V-PETL Bench's "Params"."""
        return None if self.head is None else self.trainable - self.head

    @property
    def ppt(self) -> float | None:
        """PPT of the best top-1 (``None`` without an evaluation or a head count)."""
        if self.top1_best is None or self.without_head is None:
            return None
        return ppt(self.top1_best, self.without_head)


# --- finding and reading runs ------------------------------------------------

def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders named by ``paths``, each one a run (holds ``run.json``), a
    ``run.json`` itself, or a parent folder whose subfolders are runs (one level).

    A path that does not exist, or holds no run, is a user error (DataError), so a
    typo is reported rather than giving an empty table. Order is kept, duplicates
    dropped.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise DataError(f"no such run or folder: {path} (train a stage first; runs go to "
                            "output/<run>, or pass the folder they are in)")
        if path.is_file():
            if path.name != RUN_RECORD:
                raise DataError(f"{path} is not a run: pass a run folder (with {RUN_RECORD}) or its parent")
            runs = [path.parent]
        elif (path / RUN_RECORD).is_file():
            runs = [path]
        else:
            runs = sorted(p for p in path.iterdir() if (p / RUN_RECORD).is_file())
            if not runs:
                raise DataError(f"no runs in {path}: neither it nor its subfolders hold a {RUN_RECORD}")
        for run in runs:
            if run.resolve() not in {r.resolve() for r in found}:
                found.append(run)
    return found


def _read_record(run_dir: Path) -> RunRecord:
    """The run's record, old and unfinished ones too: only the parameter counts are needed."""
    try:
        return read_record(run_dir, require=("params",))
    except CheckpointError as exc:  # for the report, an unreadable run is bad input data
        raise DataError(str(exc)) from None


def _legacy_method(record: RunRecord, stage: str) -> str:
    """The method of a record written before ``method`` was: pretraining trains
    everything; ``transfer.freeze`` meant the method of ``--freeze``."""
    if stage != "transfer":
        return "full"
    config = record.config or {}
    if (config.get("transfer") or {}).get("freeze"):
        return method_of_flag(FREEZE).name
    return (config.get("method") or {}).get("name") or "full"


def _legacy_head(record: RunRecord) -> int | None:
    """Head size of a record written before ``params.head`` was: a Linear from the
    model width to the classes (weight + bias); ``None`` if the record lacks them."""
    width = ((record.config or {}).get("model") or {}).get("embed_dim")
    classes = record.class_names
    if not isinstance(width, int) or not isinstance(classes, list):
        return None
    return width * len(classes) + len(classes)


def _percent(entry: dict | None) -> float | None:
    value = (entry or {}).get("acc_top1")
    return None if value is None else 100.0 * float(value)


def _shared_checkpoint(run_dir: Path) -> Path | None:
    """What a run gives to others: its adapter (the ``adapter/`` folder, or an older
    ``adapter.pdparams``), else its final checkpoint (``.pdparams`` or ``.safetensors``)."""
    adapter = run_dir / ADAPTER_DIR
    if (adapter / TENSORS_FILE).is_file():
        return adapter
    candidates = (run_dir / LEGACY_FILE, run_dir / "final.pdparams", run_dir / "final.safetensors")
    return next((p for p in candidates if p.is_file()), None)


def _size(path: Path) -> int:
    """Bytes of a file, or of the files of a folder (an adapter: tensors + config)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return path.stat().st_size


def load_run(run_dir: str | Path) -> RunSummary:
    """Summarise one run folder (DataError if its ``run.json`` is unreadable)."""
    run_dir = Path(run_dir)
    record = _read_record(run_dir)
    stage = record.stage or "?"
    params = record.params
    head = params.get("head")
    if head is None:
        head = _legacy_head(record)
    history = [h for h in record.history or [] if isinstance(h, dict)]
    seconds = [float(h["train_seconds"]) for h in history if h.get("train_seconds") is not None]
    best, final = record.best, record.final
    epochs = ((record.config or {}).get(stage) or {}).get("epochs")
    checkpoint = _shared_checkpoint(run_dir)
    return RunSummary(
        run_dir=run_dir, stage=stage, method=record.method or _legacy_method(record, stage),
        dataset=record.dataset or "?", trainable=int(params.get("trainable", 0)),
        total=int(params.get("total", 0)), head=None if head is None else int(head),
        top1_best=_percent(best), best_epoch=(best or {}).get("epoch"), top1_final=_percent(final),
        finished=final is not None, epochs_done=len(history),
        epochs=epochs if isinstance(epochs, int) else None,
        seconds_per_epoch=sum(seconds) / len(seconds) if seconds else None,
        checkpoint=checkpoint, checkpoint_bytes=_size(checkpoint) if checkpoint else None,
        selected_on=record.best_selected_on,
        top1_val_best=None if (best or {}).get("val_acc_top1") is None else 100.0 * float(best["val_acc_top1"]))


def select_runs(runs: Sequence[RunSummary], stage: str | None = None, sort: str = "ppt") -> list[RunSummary]:
    """Keep the runs of ``stage`` (all if ``None``) and order them for the table:
    ``ppt`` and ``top1`` (best top-1) from best to worst, ``name`` alphabetically;
    runs lacking the sort value come last, ties go by name."""
    if sort not in SORT_KEYS:
        raise ConfigError(f"unknown sort key {sort!r} (one of: {', '.join(SORT_KEYS)})")
    chosen = [r for r in runs if stage is None or r.stage == stage]
    if sort == "name":
        return sorted(chosen, key=lambda r: r.name)

    def key(run: RunSummary):
        value = run.ppt if sort == "ppt" else run.top1_best
        return (value is None, -(value or 0.0), run.name)
    return sorted(chosen, key=key)


# --- rendering ---------------------------------------------------------------

def human_size(nbytes: int | None) -> str:
    """File size for people: kB below 1 MB, then MB, GB (decimal units); ``-`` if unknown."""
    return format_size(nbytes, ("kB", "MB", "GB"), {"kB": 1, "MB": 2, "GB": 2})


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _final_cell(run: RunSummary) -> str:
    if run.finished:
        return _fmt(run.top1_final, ".2f")
    of = f"/{run.epochs}" if run.epochs else ""
    return f"unfinished ({run.epochs_done}{of} epochs)"


def selection_header(runs: Sequence[RunSummary]) -> str:
    """The "top-1 best" column's header: the split that chose the best epoch."""
    splits = {r.selected_on for r in runs}
    return f"top-1 best (selected on {splits.pop()})" if len(splits) == 1 else "top-1 best (selected on: see below)"


def selection_note(runs: Sequence[RunSummary]) -> str:
    """One line under the table: how each run's best epoch was chosen."""
    on_val = [r.name for r in runs if r.selected_on == "val"]
    on_test = [r.name for r in runs if r.selected_on != "val"]
    val_text = "test top-1 at the epoch with the best validation top-1 (val_split / val_dir)"
    test_text = "the best test top-1 over the epochs (chosen on test, no val_split: an optimistic estimate)"
    if not on_test:
        return f"top-1 best: {val_text}."
    if not on_val:
        return f"top-1 best: {test_text}."
    return f"top-1 best: {val_text} for {', '.join(on_val)}; {test_text} for {', '.join(on_test)}."


def markdown_table(runs: Sequence[RunSummary]) -> str:
    """The runs as a Markdown table (accuracies in percent, 2 decimals), with notes
    below it saying how each run's best epoch was chosen and how PPT is computed."""
    header = ["run", "method", "dataset", "params (w/o head)", selection_header(runs), "top-1 final",
              "PPT (best)", "s/epoch", "checkpoint"]
    rows = []
    for r in runs:
        ckpt = "-" if r.checkpoint is None else f"{human_size(r.checkpoint_bytes)} ({r.checkpoint.stem})"
        rows.append([r.name.replace("|", "\\|"), r.method, r.dataset,
                     "-" if r.without_head is None else f"{r.without_head:,}",
                     _fmt(r.top1_best, ".2f"), _final_cell(r), _fmt(r.ppt, ".2f"),
                     _fmt(r.seconds_per_epoch, ".2f"), ckpt])
    align = ["---", "---", "---", "---:", "---:", "---:", "---:", "---:", "---:"]
    lines = ["| " + " | ".join(cells) + " |" for cells in [header, align, *rows]]
    return "\n".join(lines + ["", selection_note(runs), PPT_NOTE])


CSV_FIELDS = ("run", "stage", "method", "dataset", "params_trainable", "params_head", "params_without_head",
              "params_total", "top1_best", "best_epoch", "top1_final", "ppt", "seconds_per_epoch",
              "checkpoint", "checkpoint_bytes", "finished", "epochs_done", "epochs", "run_dir", "selected_on",
              "top1_val_best")


def csv_table(runs: Sequence[RunSummary]) -> str:
    """The runs as CSV with raw numbers (full precision, percent for top-1, bytes,
    0-based epochs); an unknown value is an empty field."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r in runs:
        row = [r.name, r.stage, r.method, r.dataset, r.trainable, r.head, r.without_head, r.total,
               r.top1_best, r.best_epoch, r.top1_final, r.ppt, r.seconds_per_epoch,
               r.checkpoint.name if r.checkpoint else None, r.checkpoint_bytes, r.finished,
               r.epochs_done, r.epochs, str(r.run_dir), r.selected_on, r.top1_val_best]
        writer.writerow(["" if v is None else v for v in row])
    return out.getvalue()


def change_lines(run_dir: Path) -> list[tuple[str, list[int], list[float]]]:
    """A run's ``adapt_rel_change`` per group and epoch, from its run.json (none for a run
    recorded before it was, or without one): ``[(group, epochs, values)]``."""
    try:
        history = read_record(run_dir).history or []
    except CheckpointError:
        return []
    series: dict[str, tuple[list[int], list[float]]] = {}
    for entry in history:
        if not isinstance(entry, dict) or not isinstance(entry.get("epoch"), int):
            continue
        for group, value in (entry.get("adapt_rel_change") or {}).items():
            if isinstance(value, (int, float)):
                xs, ys = series.setdefault(group, ([], []))
                xs.append(entry["epoch"])
                ys.append(float(value))
    return [(group, xs, ys) for group, (xs, ys) in series.items()]


# A method whose line stays flat near 0 while the head's rises is not adapting.
CHANGE_PANEL = Panel("relative weight change (adapt/*/rel_change)", change_lines, log_y=True)


def plot_curves(runs: Sequence[RunSummary | str | Path], out_png: str | Path) -> list[Path]:
    """Train loss, eval top-1, learning rate (from VisualDL) and the relative weight change
    per group (from run.json) of the runs, one colour each, into ``out_png`` (via
    :func:`ppadapt.apps.vdl.plot_runs`). Runs without a VisualDL log are left out; returns
    the ones plotted. DataError if none has a log."""
    out_png = Path(out_png)
    _check_image_type(out_png)
    dirs = [r.run_dir if isinstance(r, RunSummary) else Path(r) for r in runs]
    plotted = [d for d in dirs if (d / "vdl").is_dir() and log_files(d / "vdl")]
    if not plotted:
        raise DataError("no VisualDL logs to plot: none of the selected runs has <run>/vdl/vdlrecords.*.log")
    try:
        fig = plot_runs(plotted, out_png, panels=[CHANGE_PANEL])
    except OSError as exc:
        raise PPAdaptError(f"cannot write {out_png}: {exc.strerror or exc}") from None
    import matplotlib.pyplot as plt  # slow to import (~0.4 s): only when plotting

    plt.close(fig)
    return plotted


def _check_image_type(path: Path) -> None:
    from matplotlib.backend_bases import FigureCanvasBase  # slow to import: only with --plot

    kinds = FigureCanvasBase.get_supported_filetypes()
    if path.suffix.lstrip(".").lower() not in kinds:
        raise ConfigError(f"--plot {path}: the file name must end in an image type matplotlib writes "
                          "(.png, .svg, .pdf, ...)")


# --- command line ------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="report.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compare finished runs: a V-PETL Bench-style Markdown table (or CSV) and their curves.\n\n"
                    "  python ppadapt/report.py                          # every run under output/\n"
                    "  python ppadapt/report.py --stage transfer --plot curves.png\n"
                    "  python ppadapt/report.py output/a output/b --csv  # chosen runs, raw numbers\n\n"
                    + PPT_NOTE)
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="run folders (with run.json) or folders of runs, one level deep (default: output)")
    p.add_argument("--stage", choices=STAGES, help="only the runs of this stage")
    p.add_argument("--sort", choices=SORT_KEYS, default="ppt",
                   help="row order: ppt or best top-1 (best first), or run name (default: ppt)")
    p.add_argument("--csv", action="store_true", help="print CSV with raw numbers instead of Markdown")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also draw train loss, eval top-1 and learning rate of the runs (from their VisualDL "
                        "logs) and how far each group of weights moved (from run.json)")
    return p


def collect_runs(paths: Sequence[str | Path], stage: str | None = None, sort: str = "ppt") -> list[RunSummary]:
    """The runs named by ``paths`` (see :func:`find_runs`), filtered and ordered
    (see :func:`select_runs`); DataError when the filter leaves none, so an empty
    table never passes for a result."""
    dirs = find_runs(paths)
    runs = select_runs([load_run(d) for d in dirs], stage, sort)
    if not runs:
        where = ", ".join(str(p) for p in paths)
        raise DataError(f"no {stage} runs among the {len(dirs)} run(s) in {where}")
    return runs


def report(paths: Sequence[str | Path], stage: str | None = None, sort: str = "ppt",
           as_csv: bool = False) -> str:
    """What ``report.py`` prints for ``paths``: the Markdown table, or CSV."""
    runs = collect_runs(paths, stage, sort)
    return csv_table(runs) if as_csv else markdown_table(runs)


def report_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``report.py``: user errors end as one ``error:`` line, exit 2."""
    args = build_parser().parse_args(argv)

    def main() -> int:
        runs = collect_runs(args.paths or ["output"], args.stage, args.sort)
        if args.plot is not None:  # notes on stderr: stdout stays a clean table or CSV
            plotted = plot_curves(runs, args.plot)
            missing = [r.name for r in runs if r.run_dir not in plotted]
            if missing:
                print(f"note: no VisualDL log, not plotted: {', '.join(missing)}", file=sys.stderr)
            print(f"curves of {len(plotted)} run(s): {args.plot}", file=sys.stderr)
        text = csv_table(runs) if args.csv else markdown_table(runs)
        print(text, end="" if text.endswith("\n") else "\n")
        return 0
    return run_tool(main)
