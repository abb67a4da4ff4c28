"""Reading VisualDL logs back (ppadapt.apps.vdl) and plotting runs from them."""
import pytest
from visualdl import LogWriter

from ppadapt.errors import DataError
from ppadapt.apps.vdl import log_files, plot_runs, read_scalars

# float32-exact values: VisualDL stores scalars as float32.
LOSS = [2.25, 1.5, 1.0, 0.75, 0.5]
ACC = [0.25, 0.5, 0.625]
LRS = [0.0125, 0.025, 0.05, 0.05, 0.046875]


def write_log(logdir, loss=LOSS, acc=ACC, lrs=LRS, params=(1000, 5000)):
    """A log shaped like VisualDLLogger's: train/* per step from 1, eval/* per epoch from 0."""
    with LogWriter(str(logdir)) as writer:
        writer.add_scalar(tag="model/trainable_params", step=0, value=params[0])
        writer.add_scalar(tag="model/total_params", step=0, value=params[1])
        for step, (value, lr) in enumerate(zip(loss, lrs), start=1):
            writer.add_scalar(tag="train/loss", step=step, value=value)
            writer.add_scalar(tag="train/lr", step=step, value=lr)
        for epoch, value in enumerate(acc):
            writer.add_scalar(tag="eval/acc_top1", step=epoch, value=value)


def test_read_scalars_round_trip(tmp_path):
    write_log(tmp_path / "vdl")
    scalars = read_scalars(tmp_path / "vdl")
    assert set(scalars) == {"model/trainable_params", "model/total_params", "train/loss",
                            "train/lr", "eval/acc_top1"}
    assert scalars["train/loss"] == ([1, 2, 3, 4, 5], LOSS)
    assert scalars["train/lr"] == ([1, 2, 3, 4, 5], LRS)
    assert scalars["eval/acc_top1"] == ([0, 1, 2], ACC)
    assert scalars["model/trainable_params"] == ([0], [1000.0])
    assert scalars["model/total_params"] == ([0], [5000.0])


def test_read_scalars_sorts_by_step_and_keeps_last_duplicate(tmp_path):
    with LogWriter(str(tmp_path)) as writer:
        for step, value in ((3, 0.5), (1, 2.0), (2, 1.0), (3, 0.25)):
            writer.add_scalar(tag="train/loss", step=step, value=value)
    assert read_scalars(tmp_path)["train/loss"] == ([1, 2, 3], [2.0, 1.0, 0.25])


def test_rerun_reads_newest_log_only(tmp_path):
    logdir = tmp_path / "vdl"
    write_log(logdir, loss=[9.0, 8.0, 7.0, 6.0, 5.0])
    old = log_files(logdir)
    assert len(old) == 1
    # Log names carry the creation time in whole seconds: make the first one older.
    stamp = int(old[0].name.split(".")[1])
    old[0].rename(logdir / f"vdlrecords.{stamp - 10:010d}.log")
    write_log(logdir)  # the rerun
    assert len(log_files(logdir)) == 2
    assert read_scalars(logdir)["train/loss"] == ([1, 2, 3, 4, 5], LOSS)


def test_missing_or_empty_logdir_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_scalars(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no VisualDL log"):
        read_scalars(tmp_path / "empty")
    with pytest.raises(DataError, match="not found"):
        plot_runs([tmp_path / "empty"])  # a run dir without vdl/


def test_plot_runs_writes_png(tmp_path):
    import matplotlib.pyplot as plt

    runs = []
    for name, loss in (("pre", LOSS), ("frozen", [1.0, 0.5, 0.25, 0.125, 0.0625])):
        write_log(tmp_path / name / "vdl", loss=loss)
        runs.append(tmp_path / name)
    (tmp_path / "noeval" / "vdl").mkdir(parents=True)
    with LogWriter(str(tmp_path / "noeval" / "vdl")) as writer:  # no eval/*, no train/lr
        writer.add_scalar(tag="train/loss", step=1, value=3.0)
    runs.append(tmp_path / "noeval")

    out = tmp_path / "plots" / "curves.png"
    fig = plot_runs(runs, out)
    try:
        assert out.is_file() and out.stat().st_size > 1000
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        axes = fig.axes
        assert [ax.get_title() for ax in axes] == ["train/loss", "eval/acc_top1", "train/lr"]
        assert [line.get_label() for line in axes[0].lines] == ["pre", "frozen", "noeval"]
        assert [line.get_label() for line in axes[1].lines] == ["pre", "frozen"]
        assert list(axes[0].lines[1].get_ydata()) == [1.0, 0.5, 0.25, 0.125, 0.0625]
        # A run keeps its colour in every subplot.
        assert axes[0].lines[1].get_color() == axes[1].lines[1].get_color()
    finally:
        plt.close(fig)


def test_plot_runs_custom_tags_without_saving(tmp_path):
    import matplotlib.pyplot as plt

    write_log(tmp_path / "run" / "vdl")
    fig = plot_runs([str(tmp_path / "run")], tags=["train/loss"])
    try:
        assert len(fig.axes) == 1
        assert not list(tmp_path.rglob("*.png"))
    finally:
        plt.close(fig)
