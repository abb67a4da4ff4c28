"""Model selection without the test set (issue 12, item 7): ``val_split`` / ``val_dir`` hold out
a validation set that chooses the best epoch; the test numbers at that epoch are reported,
and run.json, the summary and report.py say which split chose best."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import paddle
import pytest

from cifar_archive import write_image_folder
from tiny import tiny_model
from ppadapt.apps.cli import transfer_main
from ppadapt.apps.report import load_run, markdown_table
from ppadapt.apps.vdl import read_scalars
from ppadapt.config import CONFIG_DIR, load_config
from ppadapt.data import EvalTransform, build_datasets
from ppadapt.data.split import check_split, stratified_split, val_count
from ppadapt.errors import DataError, TrainingInterrupted
from ppadapt.runs.checkpoint import load_state_dict
from ppadapt.training.callbacks import BestAndFinalCheckpoint
from ppadapt.training.engine import run_stage
from tiny import InterruptAt

TINY = ["model.embed_dim=16", "model.depth=1", "model.num_heads=2", "transfer.pretrained=none", "epochs=3",
        "batch_size=64", "warmup_steps=2"]
RUN = "digits_transfer_digits_full"


# --- the split -------------------------------------------------------------------------

def test_stratified_split_is_proportional_disjoint_seeded_and_deterministic():
    counts = [10, 20, 30, 41]
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(4), counts))
    before = np.random.get_state()[1].copy()
    train, val = stratified_split(labels, 0.2, seed=7)
    assert np.array_equal(np.random.get_state()[1], before)  # its own generator, never the global one
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(labels)
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)  # both keep the data's order
    assert np.bincount(labels[val]).tolist() == [2, 4, 6, 8] == [val_count(n, 0.2) for n in counts]
    again = stratified_split(labels, 0.2, seed=7)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)
    other = stratified_split(labels, 0.2, seed=8)[1]
    assert not np.array_equal(other, val) and np.bincount(labels[other]).tolist() == [2, 4, 6, 8]


def test_a_split_that_leaves_a_class_without_images_is_one_line():
    labels = np.array([0] * 10 + [1] * 2)
    with pytest.raises(DataError) as exc:
        check_split(labels, 0.2, ["cat", "dog"], "transfer.val_split")
    message = str(exc.value)
    assert "\n" not in message
    assert message == ("transfer.val_split=0.2 leaves no validation images for class(es) dog (2 images): each "
                       "class gives round(images * val_split); set transfer.val_split to at least 0.25, or use "
                       "more training images")
    check_split(labels, 0.25, ["cat", "dog"], "transfer.val_split")  # the suggested value works
    with pytest.raises(DataError, match=r"leaves no training images for class\(es\) dog \(1 image\): the dataset "
                                        r"is too small"):
        check_split(np.array([0] * 10 + [1]), 0.5, ["cat", "dog"], "transfer.val_split")


def test_build_datasets_holds_out_a_stratified_validation_set():
    plain = build_datasets("digits", role="transfer", img_size=16)
    assert plain.val is None
    held = build_datasets("digits", role="transfer", img_size=16, val_split=0.1, seed=3)
    assert len(held.train) + len(held.val) == len(plain.train) and len(held.test) == len(plain.test)
    assert isinstance(held.val.transform, EvalTransform)
    counts = np.bincount(plain.train.labels)
    assert np.bincount(held.val.labels).tolist() == [val_count(n, 0.1) for n in counts]
    train, val = stratified_split(plain.train.labels, 0.1, 3)
    assert np.array_equal(held.train.images, plain.train.images[train])
    assert np.array_equal(held.val.images, plain.train.images[val])


def test_val_dir_of_an_image_folder(tmp_path):
    root = write_image_folder(tmp_path / "data", classes=("a", "b", "c"), per_class=3, size=16)
    val = write_image_folder(tmp_path / "given", classes=("a", "b", "c"), per_class=2, size=16, seed=1) / "train"
    bundle = build_datasets("folder", data_dir=root, img_size=16, val_dir=val)
    assert len(bundle.val) == 6 and len(bundle.train) == 9 and np.bincount(bundle.val.labels).tolist() == [2, 2, 2]
    picked = build_datasets("folder", data_dir=root, img_size=16, val_dir=val, classes=[2, 0])
    assert np.bincount(picked.val.labels).tolist() == [2, 2]
    for image in (val / "b").iterdir():
        image.unlink()
    with pytest.raises(DataError, match=r"val_dir .* has no readable images for class\(es\) \['b'\]"):
        build_datasets("folder", data_dir=root, img_size=16, val_dir=val)
    shutil.rmtree(val / "b")
    (val / "zebra").mkdir()
    with pytest.raises(DataError, match=r"has class folders that train lacks: \['zebra'\]"):
        build_datasets("folder", data_dir=root, img_size=16, val_dir=val)
    with pytest.raises(DataError, match="validation folder not found"):
        build_datasets("folder", data_dir=root, img_size=16, val_dir=tmp_path / "missing")


@pytest.mark.parametrize("override, message", [
    ("val_split=1", "error: transfer.val_split must be in [0, 1), got 1 (0 = off, the best epoch is chosen on "
                    "test; e.g. -o transfer.val_split=0.1 holds out 10% of each class's training images)"),
    ("val_split=-0.1", "error: transfer.val_split must be in [0, 1), got -0.1"),
    ("val_split=half", "error: transfer.val_split must be float, got 'half'"),
    ("val_dir=somewhere", "error: transfer.val_dir is for image folders (--data-dir DIR); for digits use "
                          "-o transfer.val_split=0.1"),
])
def test_bad_values_are_one_line(override, message, capsys):
    assert transfer_main(["--dataset", "digits", "--dry-run", "-o", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message)


def test_val_split_and_val_dir_together_is_one_line(tmp_path, capsys):
    assert transfer_main(["--data-dir", str(tmp_path), "--dry-run", "-o", "val_split=0.1", "-o",
                          f"val_dir={tmp_path}"]) == 2
    assert capsys.readouterr().err.strip() == ("error: transfer.val_split and transfer.val_dir both give a "
                                               "validation set: set only one")


# --- choosing best on val --------------------------------------------------------------

class FixedValidation:
    """Stands in for ValidationEval: the validation metrics of the epoch being evaluated."""

    last = None


def test_best_is_chosen_on_val_and_reports_the_test_numbers_of_that_epoch(tmp_path):
    model, validation = tiny_model(), FixedValidation()
    meta = {"stage": "transfer", "params": {"trainable": 5, "total": 5}, "selected_on": "val"}
    saver = BestAndFinalCheckpoint(str(tmp_path), meta=meta, validation=validation)
    saver.set_model(model)
    saver.set_params({"metrics": ["loss", "acc_top1", "acc_top5"]})
    saver.on_train_begin()
    test_acc, val_acc = [0.5, 0.9, 0.6, 0.7], [0.7, 0.6, 0.8, 0.8]  # test-best: epoch 1; val-best: 2 (tie: earlier)
    for epoch, (t, v) in enumerate(zip(test_acc, val_acc)):
        saver.on_epoch_begin(epoch)
        saver.on_train_batch_end(0, {"loss": [1.0], "acc_top1": 0.1, "acc_top5": 0.5, "batch_size": 4})
        model.network.head.bias.set_value(paddle.full([10], float(epoch)))
        saver.on_epoch_end(epoch, {})
        saver.on_eval_begin({"metrics": ["loss", "acc_top1", "acc_top5"]})
        saver.on_eval_batch_end(0, {"loss": [2.0], "batch_size": 4})
        validation.last = {"val_loss": 1.0 - v, "val_acc_top1": v, "val_acc_top5": 1.0}
        saver.on_eval_end({"loss": [2.0], "acc_top1": t, "acc_top5": 1.0})
    saver.on_train_end()
    record = json.loads((tmp_path / "run.json").read_text())
    assert saver.monitor == "val_acc_top1" and record["selected_on"] == "val"
    assert record["best"] == {"epoch": 2, "eval_loss": 2.0, "acc_top1": 0.6, "acc_top5": 1.0,
                              "val_loss": pytest.approx(0.2), "val_acc_top1": 0.8, "val_acc_top5": 1.0}
    assert [h["val_acc_top1"] for h in record["history"]] == val_acc
    assert [h["acc_top1"] for h in record["history"]] == test_acc
    best = load_state_dict(str(tmp_path / "best.pdparams"))
    assert np.array_equal(np.array(best["head.bias"]), np.full([10], 2.0, "float32"))  # epoch 2's weights
    summary = load_run(tmp_path)
    assert (summary.selected_on, summary.top1_best, summary.top1_val_best) == ("val", 60.0, 80.0)


def tiny_config(out: Path, *extra: str):
    cfg = load_config(CONFIG_DIR / "digits.yaml", [*TINY, *extra], stage="transfer")
    cfg.output = str(out)
    return cfg


def test_a_run_with_val_split_records_and_labels_its_choice(tmp_path):
    lines: list[str] = []
    run_stage(tiny_config(tmp_path / "val", "val_split=0.2"), "transfer", log=lines.append, verbose=0)
    record = json.loads((tmp_path / "val" / RUN / "run.json").read_text())
    history = record["history"]
    assert record["selected_on"] == "val" and len(history) == 3
    assert all({"acc_top1", "eval_loss", "val_acc_top1", "val_acc_top5", "val_loss"} <= set(h) for h in history)
    val = [h["val_acc_top1"] for h in history]
    best = record["best"]
    assert best["epoch"] == val.index(max(val))  # the first epoch with the best validation top-1
    chosen = history[best["epoch"]]
    assert (best["acc_top1"], best["val_acc_top1"]) == (chosen["acc_top1"], chosen["val_acc_top1"])
    assert "transfer: digits, 572 train / 144 val (val_split 0.2) / 180 test images, 5 classes" in lines
    summary = lines[-1].splitlines()
    assert summary[0] == (f"best eval:  top-1 {100 * best['acc_top1']:.2f}%, top-5 {100 * best['acc_top5']:.2f}% "
                          f"(epoch {best['epoch'] + 1}, selected on val: val top-1 {100 * best['val_acc_top1']:.2f}%)")
    final = record["final"]
    assert summary[1].endswith(f"(epoch 3; val top-1 {100 * final['val_acc_top1']:.2f}%)")
    scalars = read_scalars(tmp_path / "val" / RUN / "vdl")  # VisualDL: val/* per epoch beside eval/*
    for tag, key in (("val/acc_top1", "val_acc_top1"), ("val/loss", "val_loss"), ("eval/acc_top1", "acc_top1")):
        steps, values = scalars[tag]
        assert list(steps) == [0, 1, 2]
        assert np.allclose(values, [h[key] for h in history], rtol=1e-6), tag

    # without val_split: chosen on test as before, now labelled so
    lines.clear()
    run_stage(tiny_config(tmp_path / "test"), "transfer", log=lines.append, verbose=0)
    plain = json.loads((tmp_path / "test" / RUN / "run.json").read_text())
    assert plain["selected_on"] == "test" and "val_acc_top1" not in plain["history"][0]
    assert not any(tag.startswith("val/") for tag in read_scalars(tmp_path / "test" / RUN / "vdl"))
    assert lines[-1].splitlines()[0].endswith(f"(epoch {plain['best']['epoch'] + 1}, selected on test)")

    runs = [load_run(tmp_path / "val" / RUN)]
    table = markdown_table(runs)
    assert "| top-1 best (selected on val) |" in table.splitlines()[0]
    assert f"| {100 * best['acc_top1']:.2f} |" in table.splitlines()[2]
    assert "top-1 best: test top-1 at the epoch with the best validation top-1 (val_split / val_dir)." in table
    both = markdown_table(runs + [load_run(tmp_path / "test" / RUN)])
    assert "| top-1 best (selected on: see below) |" in both.splitlines()[0]
    assert "chosen on test, no val_split: an optimistic estimate" in both


def test_a_run_with_val_split_resumed_mid_epoch_is_the_uninterrupted_one(tmp_path):
    stochastic = ("val_split=0.2", "transfer.augment=true", "model.drop_path_rate=0.1", "batch_size=128")
    run_stage(tiny_config(tmp_path / "ref", *stochastic), "transfer", log=lambda line: None, verbose=0)
    cfg = tiny_config(tmp_path / "cut", *stochastic)
    with pytest.raises(TrainingInterrupted, match="at epoch 2/3, batch 2/5"):
        run_stage(cfg, "transfer", log=lambda line: None, verbose=0, callbacks=[InterruptAt(1, 1)])
    run_stage(cfg, "transfer", log=lambda line: None, verbose=0, resume=tmp_path / "cut" / RUN)
    for name in ("final.pdparams", "best.pdparams"):
        ref, cut = (load_state_dict(str(tmp_path / d / RUN / name)) for d in ("ref", "cut"))
        assert ref.keys() == cut.keys() and all(np.array_equal(np.array(ref[k]), np.array(cut[k])) for k in ref)

    def history(folder: str) -> list[dict]:
        record = json.loads((tmp_path / folder / RUN / "run.json").read_text())
        assert record["selected_on"] == "val"
        return [{k: v for k, v in e.items() if not k.endswith("_seconds")} for e in record["history"]]
    assert history("cut") == history("ref")
