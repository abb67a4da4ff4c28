"""Read VisualDL logs back into Python, and plot several runs side by side.

VisualDL's own UI is the way to browse logs live; this module is for what the UI
does not do: comparing runs in a notebook or a report, and asserting on logged
values in tests. It reads the files that :class:`ppadapt.training.callbacks.VisualDLLogger`
writes under ``<run_dir>/vdl``.

One log file per directory: each training run opens a new
``vdlrecords.<unix time>.log`` in its log directory, so rerunning a stage with the
same output leaves several files there. Only the newest one is read (the one with
the latest timestamp in its name), which is the latest run's log and exactly
what the VisualDL UI itself shows for that directory; merging would interleave the
old run's curves with the new one's at the same steps.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from visualdl import LogReader

from ..errors import DataError

if TYPE_CHECKING:  # matplotlib is imported only when plotting
    from matplotlib.figure import Figure

Scalars = dict[str, tuple[list[int], list[float]]]

DEFAULT_TAGS = ("train/loss", "eval/acc_top1", "train/lr")
LINE_STYLES = ("-", "--", ":", "-.")

Series = Sequence[tuple[str, Sequence[float], Sequence[float]]]


@dataclass(frozen=True)
class Panel:
    """A subplot drawn from something other than one VisualDL tag (e.g. run.json):
    ``lines(run_dir)`` gives the run's ``(name, xs, ys)`` lines, drawn in the run's colour,
    one dash style per name (explained in the subplot's own legend)."""

    title: str
    lines: Callable[[Path], Series]
    xlabel: str = "epoch"
    log_y: bool = False  # when every value is positive


def log_files(logdir: str | Path) -> list[Path]:
    """The VisualDL log files directly in ``logdir``, oldest first.

    The names embed the creation time as a zero-padded number of seconds, so name
    order is time order (the order VisualDL uses to pick a directory's log).
    """
    logdir = Path(logdir)
    if not logdir.is_dir():
        raise DataError(f"VisualDL log directory not found: {logdir} (train a stage first; "
                        "its logs go to <output>/<run>/vdl)")
    return sorted(p for p in logdir.iterdir() if p.is_file() and "vdlrecords" in p.name)


def read_scalars(logdir: str | Path) -> Scalars:
    """Every scalar tag of the newest log in ``logdir``: ``tag -> (steps, values)``, by step.

    VisualDL stores scalars as float32, so a logged 0.0125 is stored as
    0.012500000186...; each value comes back as the shortest decimal that rounds to
    the stored float32 (0.0125 again), so logged values compare equal to what was
    logged whenever float32 can hold them. Integers above 2**24 may come back
    rounded (to a multiple of 8 at ViT-B's 86 M parameters). If a step was written
    twice, the later value wins.
    """
    files = log_files(logdir)
    if not files:
        raise DataError(f"no VisualDL log (vdlrecords.*.log) in {logdir}")

    # file_path mode parses one file in full; logdir mode would go through
    # VisualDL's server-side data manager, which samples long curves down.
    reader = LogReader(file_path=str(files[-1]))
    out: Scalars = {}
    for tag in reader.get_tags().get("scalar", []):
        by_step = {int(r.id): _shortest(r.value) for r in reader.get_data("scalar", tag)}
        steps = sorted(by_step)
        out[tag] = (steps, [by_step[s] for s in steps])
    return out


def _shortest(value: float) -> float:
    """The shortest decimal that rounds to the float32 ``value`` (numpy prints float32 so)."""
    return float(str(np.float32(value)))


def _pyplot():
    """pyplot, on the Agg backend when there is no display to draw on.

    A notebook kernel (``MPLBACKEND`` set to the inline backend) or a desktop session
    keeps its backend; a headless script or CI job gets Agg instead of failing to
    open a window.
    """
    import matplotlib  # slow to import, and the backend must be chosen before pyplot is imported

    headless = (sys.platform.startswith("linux") and not os.environ.get("DISPLAY")
                and not os.environ.get("WAYLAND_DISPLAY"))
    if headless and "MPLBACKEND" not in os.environ and "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend choice above

    return plt


def plot_runs(run_dirs: Sequence[str | Path], out_png: str | Path | None = None,
              tags: Sequence[str] = DEFAULT_TAGS, panels: Sequence[Panel] = ()) -> Figure:
    """One subplot per tag, one line per run (labelled with the run directory's name),
    then one subplot per extra :class:`Panel`.

    Reads ``<run>/vdl`` of each run. A run that did not log a tag (e.g. no
    evaluation) is simply absent from that subplot. Saves the figure to ``out_png``
    when given (its folder is created) and returns it.
    """
    runs = [Path(r) for r in run_dirs]
    if not runs:
        raise DataError("plot_runs needs at least one run directory")
    data = {run: read_scalars(run / "vdl") for run in runs}

    plt = _pyplot()

    count = len(tags) + len(panels)
    fig, axes = plt.subplots(1, count, figsize=(4.5 * count, 3.6), squeeze=False)
    for ax, tag in zip(axes[0], tags):
        for i, (run, scalars) in enumerate(data.items()):
            if tag in scalars:
                steps, values = scalars[tag]
                # A fixed colour per run, so a run keeps its colour where another
                # run lacks the tag; per-epoch tags (eval/*) have few points: mark them.
                ax.plot(steps, values, label=run.name, color=f"C{i % 10}",
                        marker="o" if len(steps) <= 30 else None)
        _finish_axes(ax, tag, "epoch" if tag.startswith("eval/") else "step")
        if tag.endswith("/lr"):
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for ax, panel in zip(axes[0][len(tags):], panels):
        _draw_panel(ax, panel, runs)
    legend: dict = {}  # one shared legend: label -> first line drawn for that run
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="lower center",
                   ncol=min(len(legend), 3), frameon=False)
    rows = -(-len(legend) // 3)  # legend rows below the subplots
    fig.tight_layout(rect=(0, 0.06 + 0.06 * rows if legend else 0, 1, 1))
    if out_png is not None:
        out_png = Path(out_png)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_png, dpi=100)
    return fig


def _finish_axes(ax, title: str, xlabel: str) -> None:
    from matplotlib.ticker import MaxNLocator  # matplotlib: only when plotting

    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and epochs are whole
    xs = [x for line in ax.lines for x in line.get_xdata()]
    if xs and min(xs) == max(xs):  # one step or epoch: centre it, one unit each side
        ax.set_xlim(min(xs) - 1, max(xs) + 1)
    ax.grid(True, alpha=0.3)


def _draw_panel(ax, panel: Panel, runs: Sequence[Path]) -> None:
    """The panel's lines of every run: colour by run (as in the tag subplots), dash by name."""
    from matplotlib.lines import Line2D  # matplotlib: only when plotting

    names: list[str] = []
    values: list[float] = []
    for i, run in enumerate(runs):
        for name, xs, ys in panel.lines(run):
            if name not in names:
                names.append(name)
            ax.plot(xs, ys, label=run.name, color=f"C{i % 10}",
                    linestyle=LINE_STYLES[names.index(name) % len(LINE_STYLES)],
                    marker="o" if len(xs) <= 30 else None, markersize=3)
            values.extend(ys)
    _finish_axes(ax, panel.title, panel.xlabel)
    if panel.log_y and values and min(values) > 0:
        ax.set_yscale("log")
    if names:
        ax.legend(handles=[Line2D([], [], color="0.3", linestyle=LINE_STYLES[k % len(LINE_STYLES)], label=name)
                           for k, name in enumerate(names)], fontsize="small", frameon=False)
