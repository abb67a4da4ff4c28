"""Atomic checkpoint files, loading errors, weight loading checks, and the best/final callback."""
import json
import os

import numpy as np
import paddle
import pytest
from tiny import RandomImages, tiny_model, tiny_vit

from ppadapt.training.callbacks import BestAndFinalCheckpoint
from ppadapt.runs.checkpoint import atomic_save, atomic_write_json, load_state_dict, load_weights
from ppadapt.errors import CheckpointError
from ppadapt.methods import apply_adaptformer, is_adapter_parameter


def numpy_state(layer_or_state):
    state = layer_or_state.state_dict() if isinstance(layer_or_state, paddle.nn.Layer) else layer_or_state
    return {k: np.array(v) for k, v in state.items()}


def assert_same_state(a, b):
    a, b = numpy_state(a), numpy_state(b)
    assert sorted(a) == sorted(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


# -- atomic writes --------------------------------------------------------------------

def test_atomic_save_round_trip_is_exact(tmp_path):
    paddle.seed(3)
    model = tiny_vit()
    path = str(tmp_path / "sub" / "model.pdparams")  # the directory is created
    atomic_save(model.state_dict(), path)
    assert_same_state(load_state_dict(path), model)
    assert os.listdir(tmp_path / "sub") == ["model.pdparams"]


def test_atomic_write_json_round_trip(tmp_path):
    path = str(tmp_path / "run.json")
    atomic_write_json({"a": 1, "b": [1.5, None], "c": {"d": "é"}}, path)
    assert json.loads((tmp_path / "run.json").read_text(encoding="utf-8")) == {
        "a": 1, "b": [1.5, None], "c": {"d": "é"}}
    atomic_write_json({"mean": [np.float32(0.5)], "std": np.array([0.25]), "dir": tmp_path}, path)
    assert json.loads((tmp_path / "run.json").read_text(encoding="utf-8")) == {
        "mean": [0.5], "std": [0.25], "dir": str(tmp_path)}
    assert os.listdir(tmp_path) == ["run.json"]


def crash_in_paddle_save(monkeypatch):
    """paddle.save dies half way through writing its file."""
    real_save = paddle.save

    def half_save(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(paddle, "save", half_save)
    return KeyboardInterrupt


def crash_in_rename(monkeypatch):
    def failing_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", failing_replace)
    return OSError


@pytest.mark.parametrize("crash", [crash_in_paddle_save, crash_in_rename])
def test_crash_during_save_keeps_previous_file_and_no_temp(tmp_path, monkeypatch, crash):
    path = tmp_path / "best.pdparams"
    paddle.seed(0)
    old = tiny_vit()
    atomic_save(old.state_dict(), str(path))
    before = path.read_bytes()

    paddle.seed(1)
    new = tiny_vit()
    error = crash(monkeypatch)
    with pytest.raises(error):
        atomic_save(new.state_dict(), str(path))
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert_same_state(load_state_dict(str(path)), old)
    assert os.listdir(tmp_path) == ["best.pdparams"]


# -- load_state_dict errors -------------------------------------------------------------

def test_load_state_dict_missing_file_says_how_to_get_one(tmp_path):
    with pytest.raises(CheckpointError) as e:
        load_state_dict(str(tmp_path / "nope.pdparams"))
    message = one_line_error(e)
    assert "not found" in message and "--pretrained" in message


@pytest.mark.parametrize("content", ["truncated", "garbage", "program", "empty", "list", "directory"])
def test_load_state_dict_unreadable_files_are_one_line_errors(tmp_path, content):
    path = tmp_path / "bad.pdparams"
    if content == "truncated":
        atomic_save(tiny_vit().state_dict(), str(path))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif content == "garbage":
        path.write_bytes(b"this is not a checkpoint\n" * 50)
    elif content == "program":
        path.write_bytes(b"x" * 100)  # paddle.load parses these bytes as a (meaningless) Program
    elif content == "empty":
        path.write_bytes(b"")
    elif content == "list":
        paddle.save([1, 2, 3], str(path))
    else:
        path.mkdir()
    with pytest.raises(CheckpointError) as e:
        load_state_dict(str(path))
    message = one_line_error(e)
    assert str(path) in message
    expected = {"truncated": "truncated", "garbage": "corrupt", "program": "corrupt", "empty": "empty",
                "list": "not a Paddle state dict", "directory": "not a file"}[content]
    assert expected in message


# -- load_weights -----------------------------------------------------------------------

def test_load_weights_other_depth_lists_missing_and_unexpected_keys():
    shallow, deep = tiny_vit(depth=2), tiny_vit(depth=3)
    deep_before = numpy_state(deep)
    with pytest.raises(CheckpointError) as e:
        load_weights(deep, shallow.state_dict())
    message = one_line_error(e)
    # blocks.2 has 11 tensors (no qkv bias): 4 named, then a count
    assert "11 missing keys (blocks.2." in message and "and 7 more" in message
    assert "another architecture" in message
    assert_same_state(deep, deep_before)  # all or nothing

    with pytest.raises(CheckpointError) as e:
        load_weights(shallow, deep.state_dict())
    message = one_line_error(e)
    assert "11 unexpected keys (blocks.2." in message and "missing" not in message


def test_load_weights_other_width_lists_shape_mismatches():
    narrow, wide = tiny_vit(embed_dim=32), tiny_vit(embed_dim=48)
    with pytest.raises(CheckpointError) as e:
        load_weights(wide, narrow.state_dict())
    message = one_line_error(e)
    assert "shape mismatches (" in message
    assert "pos_embed: checkpoint [1, 17, 32] vs model [1, 17, 48]" in message
    assert "embed_dim" in message


def test_load_weights_with_skip_and_allow_missing():
    paddle.seed(0)
    source = tiny_vit(class_num=10)
    paddle.seed(1)
    target = tiny_vit(class_num=5)
    apply_adaptformer(target)
    before = numpy_state(target)

    # without the allowances: head shapes differ and the adapters are missing
    with pytest.raises(CheckpointError, match="shape mismatches.*head.weight"):
        load_weights(target, source.state_dict())
    with pytest.raises(CheckpointError, match="missing keys"):
        load_weights(target, source.state_dict(), skip=lambda k: k.startswith("head."))

    kept = load_weights(target, source.state_dict(), skip=lambda k: k.startswith("head."),
                        allow_missing=is_adapter_parameter)
    after, src = numpy_state(target), numpy_state(source)
    assert "head.weight" in kept and "head.bias" in kept
    assert sorted(kept) == sorted(k for k in after if k.startswith("head.") or is_adapter_parameter(k))
    for k in after:
        expected = before[k] if k in kept else src[k]
        assert np.array_equal(after[k], expected), k


def test_load_weights_accepts_numpy_values():
    source, target = tiny_vit(), tiny_vit()
    assert load_weights(target, numpy_state(source)) == []
    assert_same_state(target, source)


# -- BestAndFinalCheckpoint --------------------------------------------------------------

def run_synthetic_epochs(saver, model, accs):
    """Drive the callback like fit does, marking the weights of each epoch in head.bias."""
    saver.set_model(model)
    saver.set_params({"batch_size": 4, "epochs": len(accs), "steps": 2, "verbose": 0,
                      "metrics": ["loss", "acc_top1", "acc_top5"]})
    saver.on_train_begin()
    for epoch, acc in enumerate(accs):
        saver.on_epoch_begin(epoch)
        saver.on_train_batch_end(0, {"loss": [2.0], "acc_top1": 0.1, "acc_top5": 0.5, "batch_size": 4})
        saver.on_train_batch_end(1, {"loss": [1.0], "acc_top1": 0.2, "acc_top5": 0.6, "batch_size": 2})
        model.network.head.bias.set_value(paddle.full([10], float(epoch)))
        saver.on_epoch_end(epoch, {"loss": [1.0]})
        with open(saver.json_path) as f:
            assert len(json.load(f)["history"]) == epoch + 1  # written after every epoch
        saver.on_eval_begin({"steps": 2, "metrics": ["loss", "acc_top1", "acc_top5"]})
        saver.on_eval_batch_end(0, {"loss": [3.0], "batch_size": 4})
        saver.on_eval_batch_end(1, {"loss": [6.0], "batch_size": 2})
        saver.on_eval_end({"loss": [6.0], "acc_top1": acc, "acc_top5": acc + 0.1,
                           "step": 1, "batch_size": 2})
    saver.on_train_end()


def test_best_and_final_checkpoint_synthetic_run(tmp_path):
    run_dir = tmp_path / "run"
    model = tiny_model(lr=0.1)
    saver = BestAndFinalCheckpoint(str(run_dir), meta={"stage": "pretrain", "params": {"total": 5}})
    run_synthetic_epochs(saver, model, accs=[0.5, 0.7, 0.3])

    best = load_state_dict(str(run_dir / "best.pdparams"))
    final = load_state_dict(str(run_dir / "final.pdparams"))
    assert np.array_equal(np.array(best["head.bias"]), np.full([10], 1.0, "float32"))  # epoch 1
    assert np.array_equal(np.array(final["head.bias"]), np.full([10], 2.0, "float32"))
    assert_same_state(final, model.network)

    record = json.loads((run_dir / "run.json").read_text())
    assert record["stage"] == "pretrain" and record["params"] == {"total": 5}
    assert record["best"] == saver.best == {"epoch": 1, "eval_loss": 4.0, "acc_top1": 0.7,
                                           "acc_top5": pytest.approx(0.8)}
    assert record["checkpoints"] == {"best": str(run_dir / "best.pdparams"),
                                     "final": str(run_dir / "final.pdparams")}
    assert record["history"] == saver.history and len(saver.history) == 3
    entry = saver.history[0]
    assert entry["epoch"] == 0
    assert entry["train_loss"] == pytest.approx((2.0 * 4 + 1.0 * 2) / 6)  # sample-weighted mean
    assert entry["train_acc_top1"] == 0.2 and entry["train_acc_top5"] == 0.6  # last batch
    assert entry["eval_loss"] == pytest.approx((3.0 * 4 + 6.0 * 2) / 6)  # not the last batch's 6.0
    assert entry["acc_top1"] == 0.5 and entry["lr"] == pytest.approx(0.1)
    assert entry["epoch_seconds"] >= entry["train_seconds"] >= 0
    assert record["final"]["epoch"] == 2 and record["final"]["acc_top1"] == 0.3
    assert sorted(os.listdir(run_dir)) == ["best.pdparams", "final.pdparams", "run.json"]


def test_best_checkpoint_is_rewritten_only_on_improvement(tmp_path, monkeypatch):
    saved = []
    import ppadapt.training.callbacks.best_final as module

    real = module.save_state_dict
    monkeypatch.setattr(module, "save_state_dict", lambda obj, path: (saved.append(os.path.basename(path)),
                                                                      real(obj, path)))
    saver = BestAndFinalCheckpoint(str(tmp_path), monitor="acc_top1")
    run_synthetic_epochs(saver, tiny_model(), accs=[0.5, 0.5, 0.6, 0.2])
    assert saved == ["best.pdparams", "best.pdparams", "final.pdparams"]  # epochs 0 and 2 only
    assert saver.best["epoch"] == 2


def test_best_and_final_in_a_real_fit_with_and_without_eval(tmp_path):
    model = tiny_model()
    saver = BestAndFinalCheckpoint(str(tmp_path / "eval"), meta={"k": "v"})
    model.fit(RandomImages(10), RandomImages(7, seed=1), batch_size=4, epochs=2, verbose=0,
              callbacks=[saver])
    record = json.loads((tmp_path / "eval" / "run.json").read_text())
    assert [h["epoch"] for h in record["history"]] == [0, 1]
    assert {"train_loss", "eval_loss", "acc_top1", "acc_top5", "lr"} <= set(record["history"][1])
    assert record["best"]["epoch"] in (0, 1) and record["k"] == "v"
    assert_same_state(load_state_dict(str(tmp_path / "eval" / "final.pdparams")), model.network)

    model = tiny_model()
    saver = BestAndFinalCheckpoint(str(tmp_path / "noeval"))
    model.fit(RandomImages(10), batch_size=4, epochs=2, verbose=0, callbacks=[saver])
    record = json.loads((tmp_path / "noeval" / "run.json").read_text())
    assert sorted(os.listdir(tmp_path / "noeval")) == ["final.pdparams", "run.json"]
    assert record["best"] is None and saver.best is None
    assert record["checkpoints"] == {"best": None, "final": str(tmp_path / "noeval" / "final.pdparams")}
    assert len(record["history"]) == 2 and "eval_loss" not in record["history"][0]
    assert record["final"]["epoch"] == 1


def test_only_rank0_writes_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setenv("PADDLE_TRAINER_ID", "1")
    saver = BestAndFinalCheckpoint(str(tmp_path / "run"))
    tiny_model().fit(RandomImages(10), RandomImages(7, seed=1), batch_size=4, epochs=1, verbose=0,
                     callbacks=[saver])
    assert not (tmp_path / "run").exists()
    assert saver.best is not None and len(saver.history) == 1  # still tracked in memory
