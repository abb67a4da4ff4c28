"""report.py: the V-PETL Bench-style table of finished runs, its CSV, the curves PNG, the CLI."""
import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from visualdl import LogWriter

from ppadapt.config import CONFIG_DIR, load_config
from ppadapt.errors import ConfigError, DataError
from ppadapt.apps.report import (PPT_NOTE, find_runs, human_size, load_run, plot_curves, ppt, report,
                               select_runs)

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- PPT -----------------------------------------------------------------------

@pytest.mark.parametrize("top1, params, published", [
    (88.02, 0.10e6, 0.88),  # V-PETL Bench rows: a 0.10 M-parameter method at 88.02%
    (52.94, 0, 0.53),       # a 0-parameter row keeps its accuracy
])
def test_ppt_reproduces_v_petl_bench_rows(top1, params, published):
    assert round(ppt(top1, params), 2) == published


def test_ppt_by_hand():
    # full fine-tuning of ViT-B (85.8 M): exp(-log10(9.58)) = exp(-0.9813655) = 0.3747990
    assert ppt(65.57, 85.8e6) == pytest.approx(0.6557 * 0.3747990, abs=1e-7)
    assert round(ppt(65.57, 85.8e6), 2) == 0.25
    assert ppt(100.0, 9e7) == pytest.approx(math.exp(-1))           # log10(9 + 1) = 1
    assert ppt(90.0, 1e7) == pytest.approx(0.9 * 2 ** (-1 / math.log(10)))  # exp(-log10 2)
    assert ppt(100.0, 0) == 1.0
    with pytest.raises(ValueError):
        ppt(50.0, -1)


def test_human_size():
    assert human_size(2104) == "2.1 kB"
    assert human_size(858_796) == "858.8 kB"
    assert human_size(345_230_000) == "345.23 MB"
    assert human_size(None) == "-"


# --- runs: one real tiny transfer, and hand-written records ---------------------

def write_run(run_dir: Path, *, stage="transfer", method="lora", params=None, best=0.5, final=0.4,
              epochs=3, done=3, seconds=(1.0, 2.0, 3.0), embed_dim=64, freeze=False, ckpt_bytes=1000,
              adapter_bytes=None, vdl=False):
    """A run.json as BestAndFinalCheckpoint writes it; ``method=None`` and no
    ``head`` in ``params`` make it an older record."""
    run_dir.mkdir(parents=True)
    history = [{"epoch": e, "train_loss": 1.0 / (e + 1), "train_seconds": seconds[e], "acc_top1": best}
               for e in range(done)]
    record = {"stage": stage, "dataset": "digits", "class_names": ["5", "6", "7", "8", "9"],
              "config": {"model": {"embed_dim": embed_dim},
                         "transfer": {"freeze": freeze, "epochs": epochs}, "pretrain": {"epochs": epochs}},
              "params": params or {"trainable": 10_325, "total": 200_000, "head": 325, "without_head": 10_000},
              "history": history,
              "best": {"epoch": done - 1, "eval_loss": 1.0, "acc_top1": best, "acc_top5": 1.0} if done else None,
              "final": {"epoch": done - 1, "acc_top1": final} if done == epochs else None}
    if method is not None:
        record["method"] = method
    (run_dir / "run.json").write_text(json.dumps(record))
    if ckpt_bytes is not None:
        (run_dir / "final.pdparams").write_bytes(b"\0" * ckpt_bytes)
    if adapter_bytes is not None:
        (run_dir / "adapter.pdparams").write_bytes(b"\0" * adapter_bytes)
    if vdl:
        with LogWriter(str(run_dir / "vdl")) as writer:
            for step in range(1, 9):
                writer.add_scalar(tag="train/loss", step=step, value=2.0 / step)
                writer.add_scalar(tag="train/lr", step=step, value=0.1 * step / 8)
            for epoch in range(done):
                writer.add_scalar(tag="eval/acc_top1", step=epoch, value=0.25 * (epoch + 1))
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """output/ with one real tiny AdaptFormer transfer on digits (~3 s) and three
    hand-written runs: a LoRA run, an older frozen record, an unfinished pretraining."""
    from ppadapt.training.engine import run_stage

    out = tmp_path_factory.mktemp("report") / "output"
    cfg = load_config(CONFIG_DIR / "digits.yaml",
                      ["model.embed_dim=16", "model.depth=1", "model.num_heads=2", "adapter.bottleneck=4",
                       "transfer.freeze=true", "transfer.pretrained=none", "epochs=2", "batch_size=128",
                       "warmup_steps=2"], stage="transfer")
    cfg.output = str(out)
    run_stage(cfg, "transfer", log=lambda line: None, verbose=0)
    write_run(out / "lora_run", best=0.9, final=0.875, vdl=True)
    write_run(out / "old_frozen", method=None, params={"trainable": 8_837, "total": 213_189}, freeze=True,
              best=0.7, final=0.7, seconds=(0.5, 1.5, 1.0), ckpt_bytes=858_796)
    write_run(out / "half_pretrain", stage="pretrain", method=None, epochs=10, done=2, best=0.3,
              params={"trainable": 213_189, "total": 213_189}, ckpt_bytes=None)
    (out / "not_a_run").mkdir()  # ignored: no run.json
    return out


def table_rows(markdown: str) -> dict[str, list[str]]:
    rows = [ln for ln in markdown.splitlines() if ln.startswith("| ")][2:]  # header, alignment
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in ln.strip("|").split("|")] for ln in rows)}


def test_real_run_records_head_count(runs):
    record = json.loads((runs / "digits_transfer_digits_frozen" / "run.json").read_text())
    head = 16 * 5 + 5  # Linear(embed_dim -> 5 classes), weight + bias
    assert record["params"]["head"] == head
    assert record["params"]["without_head"] == record["params"]["trainable"] - head
    assert record["method"] == "adaptformer"


def test_table_values_come_from_run_json(runs):
    text = report([runs], sort="name")
    assert text.endswith(PPT_NOTE) and "best top-1" in PPT_NOTE
    rows = table_rows(text)
    assert sorted(rows) == ["digits_transfer_digits_frozen", "half_pretrain", "lora_run", "old_frozen"]

    real_dir = runs / "digits_transfer_digits_frozen"
    record = json.loads((real_dir / "run.json").read_text())
    p = record["params"]["without_head"]
    best, final = 100 * record["best"]["acc_top1"], 100 * record["final"]["acc_top1"]
    secs = [h["train_seconds"] for h in record["history"]]
    adapter_bytes = sum(f.stat().st_size for f in (real_dir / "adapter").iterdir())  # tensors + config
    assert rows["digits_transfer_digits_frozen"] == [
        "adaptformer", "digits", f"{p:,}", f"{best:.2f}", f"{final:.2f}", f"{ppt(best, p):.2f}",
        f"{sum(secs) / len(secs):.2f}", f"{human_size(adapter_bytes)} (adapter)"]

    assert rows["lora_run"] == ["lora", "digits", "10,000", "90.00", "87.50", f"{ppt(90, 10_000):.2f}",
                                "2.00", "1.0 kB (final)"]
    # older record: method from transfer.freeze, head = 64 * 5 + 5 from the config and class names
    assert rows["old_frozen"] == ["adaptformer", "digits", "8,512", "70.00", "70.00", f"{ppt(70, 8_512):.2f}",
                                  "1.00", "858.8 kB (final)"]
    assert rows["half_pretrain"] == ["full", "digits", "212,864", "30.00", "unfinished (2/10 epochs)",
                                     f"{ppt(30, 212_864):.2f}", "1.50", "-"]


def test_csv_parses_back_to_raw_numbers(runs):
    text = report([runs], as_csv=True)
    rows = {r["run"]: r for r in csv.DictReader(io.StringIO(text))}
    assert len(rows) == 4
    old = rows["old_frozen"]
    assert (old["method"], old["stage"], old["finished"]) == ("adaptformer", "transfer", "True")
    assert int(old["params_trainable"]) == 8_837 and int(old["params_head"]) == 325
    assert int(old["params_without_head"]) == 8_512 and int(old["checkpoint_bytes"]) == 858_796
    assert float(old["top1_best"]) == pytest.approx(70.0) and float(old["ppt"]) == pytest.approx(ppt(70.0, 8_512))
    assert float(old["seconds_per_epoch"]) == pytest.approx(1.0)
    half = rows["half_pretrain"]
    assert half["top1_final"] == "" and half["checkpoint"] == "" and half["finished"] == "False"
    assert (int(half["epochs_done"]), int(half["epochs"])) == (2, 10)
    # default order: PPT, best first
    ppts = [float(r["ppt"]) for r in rows.values()]
    assert ppts == sorted(ppts, reverse=True)


def test_select_stage_and_sort(runs):
    all_runs = [load_run(d) for d in find_runs([runs])]
    assert [r.name for r in select_runs(all_runs, "pretrain")] == ["half_pretrain"]
    by_top1 = select_runs(all_runs, "transfer", "top1")
    assert [r.top1_best for r in by_top1] == sorted((r.top1_best for r in by_top1), reverse=True)
    assert [r.name for r in select_runs(all_runs, sort="name")] == sorted(r.name for r in all_runs)
    with pytest.raises(ConfigError):
        select_runs(all_runs, sort="speed")
    with pytest.raises(DataError, match="no pretrain runs"):
        report([runs / "lora_run"], stage="pretrain")


def test_find_runs_paths(runs, tmp_path):
    lora = runs / "lora_run"
    assert find_runs([lora, lora / "run.json", runs]) == [lora] + [d for d in sorted(runs.iterdir())
                                                                   if d.name not in ("lora_run", "not_a_run")]
    with pytest.raises(DataError, match="no such run or folder"):
        find_runs([tmp_path / "missing"])
    with pytest.raises(DataError, match="no runs in"):
        find_runs([runs / "not_a_run"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read run record"):
        load_run(tmp_path / "bad")


def test_plot_curves_writes_png(runs, tmp_path):
    selected = select_runs([load_run(d) for d in find_runs([runs])])
    plotted = plot_curves(selected, tmp_path / "curves.png")
    assert {p.name for p in plotted} == {"digits_transfer_digits_frozen", "lora_run"}  # the ones with logs
    data = (tmp_path / "curves.png").read_bytes()
    assert data.startswith(PNG_MAGIC)
    # larger than the same figure with empty axes (a run that logged none of the tags)
    with LogWriter(str(tmp_path / "blank" / "vdl")) as writer:
        writer.add_scalar(tag="other/tag", step=1, value=1.0)
    plot_curves([tmp_path / "blank"], tmp_path / "blank.png")
    assert len(data) > (tmp_path / "blank.png").stat().st_size + 5_000
    with pytest.raises(DataError, match="no VisualDL logs"):
        plot_curves([runs / "old_frozen"], tmp_path / "none.png")
    with pytest.raises(ConfigError):
        plot_curves(selected, tmp_path / "curves.nope")


# --- the command line ----------------------------------------------------------

def run_report(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")}
    return subprocess.run([sys.executable, str(REPO / "ppadapt" / "report.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_cli_default_output_folder_and_plot(runs):
    proc = run_report("--stage", "transfer", "--plot", "plots/curves.png", cwd=runs.parent)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    rows = table_rows(proc.stdout)
    assert sorted(rows) == ["digits_transfer_digits_frozen", "lora_run", "old_frozen"]
    assert proc.stdout.splitlines()[0].startswith("| run | method | dataset | params (w/o head) |")
    assert (runs.parent / "plots" / "curves.png").read_bytes().startswith(PNG_MAGIC)
    assert "not plotted: old_frozen" in proc.stderr


def test_cli_csv(runs):
    proc = run_report(runs / "lora_run", runs / "old_frozen", "--csv", "--sort", "name", cwd=runs)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [r["run"] for r in rows] == ["lora_run", "old_frozen"]
    assert float(rows[0]["top1_final"]) == pytest.approx(87.5)


def test_cli_bad_path_is_one_error_line(tmp_path):
    proc = run_report(cwd=tmp_path)  # no output/ here
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert len(lines) == 1 and lines[0].startswith("error: no such run or folder: output"), proc.stderr
