"""tune.py (issue 12, item 8): a grid per method scored on a validation split, the chosen
setting retrained on the full training set over seeds; reruns skip finished runs and
continue an interrupted one exactly; bad inputs are one line.

The tiny search: generated CIFAR-10 archive (10 per class train, 3 test), ViT dim 16,
depth 1, 2 epochs, linear probe and BitFit, --grid lr=0.03,0.3, 2 seeds: 8 runs.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cifar_archive import write_cifar_archive
from ppadapt.apps.tune import tune_main
from ppadapt.config import CONFIG_DIR
from ppadapt.runs.checkpoint import load_state_dict

REPO = Path(__file__).resolve().parent.parent
METHODS = ("linear", "bitfit")
POINTS = ("lr=0.03", "lr=0.3")
SEEDS = (42, 43)


def tiny_args(archive: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", str(CONFIG_DIR / "digits.yaml"), "--dataset", "cifar10", "--data-file", str(archive),
            "--pretrained", "none", "--epochs", "2", "--batch-size", "32", "--output", str(out), "--quiet",
            "--val-split", "0.2", "-o", "model.img_size=32", "-o", "model.patch_size=8", "-o", "model.embed_dim=16",
            "-o", "model.depth=1", "-o", "model.num_heads=2", "-o", "model.carry={}", "-o", "warmup_steps=2",
            "-o", "transfer.augment=true", "-o", "model.drop_path_rate=0.1", *extra]


def folders(out: Path, method: str) -> list[Path]:
    """The grid's run folders, then the seed runs' (named by the chosen point)."""
    root = out / "tune" / method
    chosen = json.loads((out / "tune.json").read_text()) if (out / "tune.json").is_file() else None
    point = chosen["methods"][method]["chosen"] if chosen else None
    seeds = [root / "seeds" / f"{point}_seed{s}_transfer_cifar10_{method}" for s in SEEDS] if point else \
        [f for s in SEEDS for f in sorted((root / "seeds").glob(f"*_seed{s}_transfer_cifar10_{method}"))]
    return [root / "grid" / f"{p}_transfer_cifar10_{method}" for p in POINTS] + seeds


def table(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("| ")]


ENV = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")}


def run_tune(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "ppadapt" / "tune.py"), *args], capture_output=True, text=True,
                          cwd=REPO, env=ENV, timeout=600)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_cifar_archive(tmp_path_factory.mktemp("data") / "cifar-10-python.tar.gz", "cifar10",
                               train_per_class=10, test_per_class=3)


@pytest.fixture(scope="module")
def searched(archive, tmp_path_factory):
    """The whole search, uninterrupted: (output folder, stdout, JSON)."""
    out = tmp_path_factory.mktemp("tune")
    args = tiny_args(archive, out, "--methods", ",".join(METHODS), "--grid", "lr=0.03,0.3", "--seeds", "2",
                     "--json", str(out / "tune.json"), "--csv", str(out / "tune.csv"))
    proc = run_tune(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout, json.loads((out / "tune.json").read_text())


def test_search_trains_every_point_and_seed_and_prints_the_table(searched):
    out, stdout, result = searched
    for method in METHODS:
        for folder in folders(out, method):
            record = json.loads((folder / "run.json").read_text())
            assert record["final"] is not None and record["method"] == method
            grid = folder.parent.name == "grid"
            assert record["selected_on"] == ("val" if grid else "test")
            assert record["config"]["transfer"]["val_split"] == (0.2 if grid else 0.0)
        info = result["methods"][method]
        assert [g["point"] for g in info["grid"]] == list(POINTS)
        scores = [g["val_top1"] for g in info["grid"]]
        best = max(scores)
        assert info["chosen"] in [p for p, s in zip(POINTS, scores) if s == best]
        chosen_lr = float(info["setting"]["lr"])
        seeds = info["seeds"]
        assert [s["seed"] for s in seeds] == list(SEEDS)
        for s in seeds:  # each seed run: the chosen setting on the full training set, its final test top-1
            record = json.loads((Path(s["run_dir"]) / "run.json").read_text())
            assert (record["config"]["transfer"]["lr"], record["config"]["seed"]) == (chosen_lr, s["seed"])
            assert s["test_top1"] == pytest.approx(100 * record["final"]["acc_top1"])
        values = [s["test_top1"] for s in seeds]
        assert info["test_top1_mean"] == pytest.approx(np.mean(values))
        assert info["test_top1_std"] == pytest.approx(np.std(values, ddof=1))
    rows = table(stdout)
    assert rows[0] == "| method | setting | val top-1 | val loss (final) | |"
    assert rows[6] == ("| method | chosen setting | val top-1 | test top-1 (final, mean ± std) | seeds | "
                       "params (w/o head) | PPT |")
    linear = result["methods"]["linear"]
    assert rows[8].startswith(f"| linear | {linear['chosen']} | ") and " | 2 | 0 | " in rows[8]
    assert f"{linear['test_top1_mean']:.2f} ± {linear['test_top1_std']:.2f}" in rows[8]
    assert (out / "tune.csv").read_text().splitlines()[0].startswith("method,chosen,val_top1,test_top1_mean")


def test_a_rerun_skips_every_finished_run(searched, archive, capsys):
    out, stdout, _ = searched
    stamps = {f: (f / "run.json").stat().st_mtime_ns for m in METHODS for f in folders(out, m)}
    start = time.perf_counter()
    assert tune_main(tiny_args(archive, out, "--methods", ",".join(METHODS), "--grid", "lr=0.03,0.3",
                               "--seeds", "2")) == 0
    seconds = time.perf_counter() - start
    printed = capsys.readouterr().out
    assert printed.count(": skipped, ") == 8 and ": trained" not in printed and ": resumed" not in printed
    assert table(printed) == table(stdout)
    assert stamps == {f: (f / "run.json").stat().st_mtime_ns for f in stamps}
    assert seconds < 30  # nothing trains: reading the configs and records only


def test_an_interrupted_search_continues_where_it_stopped(searched, archive, tmp_path):
    """Ctrl-C in epoch 2 of the first run (tests/drive.py parks it there), then the same
    command again: that run resumes mid-epoch, the rest train; all end bit-identical to the
    uninterrupted search's runs."""
    reference, _, _ = searched
    args = tiny_args(archive, tmp_path, "--methods", "linear", "--grid", "lr=0.03,0.3", "--seeds", "2")
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "drive.py"), "--pause-at", "1:1", "--pause-file",
                             str(marker), "tune", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env=ENV)
    deadline = time.time() + 300
    while not marker.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"never reached epoch 2: {proc.communicate()[1][-2000:]}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: saved a resumable checkpoint at epoch 2/2, batch 2/3")
    assert last.endswith("; or run the same tune.py command again: finished runs are skipped and this one "
                         "continues")
    first = folders(tmp_path, "linear")[0]
    assert json.loads((first / "run.json").read_text())["final"] is None

    again = run_tune(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "grid 1/2 lr=0.03: resumed" in again.stdout and again.stdout.count(": trained, ") == 3
    for mine, theirs in zip(folders(tmp_path, "linear"), folders(reference, "linear")):
        for name in ("final.pdparams", "best.pdparams"):
            a, b = (load_state_dict(str(f / name)) for f in (mine, theirs))
            assert all(np.array_equal(np.array(a[k]), np.array(b[k])) for k in b), (mine.name, name)


def test_a_grid_that_chooses_another_point_trains_its_own_seed_runs(archive, tmp_path):
    """The seed runs' folders name their setting: a second search whose choice differs
    trains beside the first one's seed runs instead of refusing their folders."""
    for lr in ("0.03", "0.3"):
        proc = run_tune(*tiny_args(archive, tmp_path, "--methods", "linear", "--grid", f"lr={lr}", "--seeds", "1"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "seed 1/1 (42): trained" in proc.stdout
    seeds = sorted(p.name for p in (tmp_path / "tune" / "linear" / "seeds").iterdir())
    assert seeds == ["lr=0.03_seed42_transfer_cifar10_linear", "lr=0.3_seed42_transfer_cifar10_linear"]


@pytest.mark.parametrize("extra, message", [
    (["--grid", "lr"], "error: --grid 'lr' is not KEY=V1,V2,... (e.g. --grid lr=0.01,0.03)"),
    (["--grid", "lr=0.1,"], "error: --grid 'lr=0.1,' has an empty value"),
    (["--grid", "lr=0.1,0.1"], "error: --grid lr lists 0.1 twice (give each value once)"),
    (["--grid", "lr=0.1", "--grid", "transfer.lr=0.2"], "error: --grid transfer.lr is given twice"),
    (["--grid", "lrr=0.1"], "error: --grid: unknown config key 'lrr'; did you mean 'transfer.lr'?"),
    (["--grid", "lr=fast"], "error: transfer.lr must be float, got 'fast'"),
    (["--grid", "lr=-1"], "error: transfer.lr must be positive, got -1.0"),
    (["--grid", "seed=1,2"], "error: --grid seed: tune.py sets seed itself (use --seed)"),
    (["--grid", "epochs=1,3"], "error: --grid epochs and --epochs both set transfer.epochs: drop one"),
    (["-o", "val_split=0.3"], "error: -o val_split: tune.py sets transfer.val_split itself (use --val-split)"),
    (["--seeds", "0"], "error: --seeds must be at least 1, got 0"),
    (["--val-split", "0"], "error: --val-split must be in (0, 1), got 0"),
    (["--methods", "linear,nope"], "error: unknown method 'nope'"),
    (["--methods", "linear,,lora"], "error: --methods 'linear,,lora' has an empty name"),
    (["--grid", "method.rank=4"], "error: method 'full' has no option 'rank' (its options: none)"),
])
def test_bad_inputs_are_one_line(extra, message, archive, tmp_path, capsys):
    assert tune_main(tiny_args(archive, tmp_path, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
    assert not (tmp_path / "tune").exists()  # found before anything trains


def test_a_folder_of_other_settings_is_refused(searched, archive, capsys):
    out, _, _ = searched
    assert tune_main(tiny_args(archive, out, "--methods", "linear", "--grid", "lr=0.03,0.3", "-o",
                               "momentum=0.8")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    folder = folders(out, "linear")[0]
    assert err == [f"error: {folder} holds a run with other settings (transfer.momentum is 0.9 there, 0.8 now): "
                   "remove that folder, or pass another --output"]


def test_a_validation_split_too_small_for_the_data_is_one_line(archive, tmp_path, capsys):
    assert tune_main(tiny_args(archive, tmp_path, "--methods", "linear", "--val-split", "0.01")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: transfer.val_split=0.01 leaves no validation images for "
                                               "class(es) airplane (10 images), automobile (10 images)")
