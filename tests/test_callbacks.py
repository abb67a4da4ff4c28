"""LR warmup schedules and the VisualDL logger, as pure functions and inside paddle.Model.fit."""
import math
import os

import paddle
import pytest
from tiny import RandomImages, tiny_model
from visualdl import LogReader

from ppadapt.training.callbacks import (VisualDLLogger, WarmupEpochCosine, WarmupStepCosine,
                               warmup_epoch_cosine_lr, warmup_step_cosine_lr)
from ppadapt.methods.trainable import ParamCount, count_parameters

# 10 samples in batches of 4: 3 steps per epoch (the last one of 2 samples).
TRAIN_N, EVAL_N, BATCH, STEPS_PER_EPOCH = 10, 7, 4, 3


class LRRecorder(paddle.callbacks.Callback):
    """The LR each training batch was run with, as the optimizer reports it and as
    the tensor the update kernels read."""

    def __init__(self):
        super().__init__()
        self.lrs, self.tensor_lrs = [], []

    def on_train_batch_end(self, step, logs=None):
        opt = self.model._optimizer
        self.lrs.append(opt.get_lr())
        self.tensor_lrs.append(float(opt._global_learning_rate()))


def fit(callbacks, epochs, eval_data=None, model=None):
    model = model or tiny_model()
    model.fit(RandomImages(TRAIN_N), eval_data, batch_size=BATCH, epochs=epochs, verbose=0,
              callbacks=callbacks)
    return model


# -- pure schedules -----------------------------------------------------------------

def test_warmup_epoch_cosine_values():
    lr = lambda step, epoch, **kw: warmup_epoch_cosine_lr(  # noqa: E731
        0.1, step, epoch, **{"warmup_steps": 4, "epochs": 10, **kw})
    assert lr(0, 0) == pytest.approx(0.025, rel=1e-12)  # first batch already trains
    assert lr(1, 0) == pytest.approx(0.05, rel=1e-12)
    assert lr(3, 0) == pytest.approx(0.1, rel=1e-12)  # last warmup step reaches base_lr
    assert lr(2, 1) == pytest.approx(0.075, rel=1e-12)  # warmup is by step, whatever the epoch
    assert lr(4, 0) == pytest.approx(0.1, rel=1e-12)  # cosine at epoch 0 is base_lr
    assert lr(50, 1) == pytest.approx(0.05 * (1 + math.cos(math.pi / 10)), rel=1e-12)
    assert lr(50, 5) == pytest.approx(0.05, rel=1e-12)
    assert lr(99, 9) == pytest.approx(0.05 * (1 + math.cos(0.9 * math.pi)), rel=1e-12)
    assert lr(99, 9, min_lr=0.01) == pytest.approx(0.01 + 0.045 * (1 + math.cos(0.9 * math.pi)), rel=1e-12)
    assert lr(99, 10, min_lr=0.01) == pytest.approx(0.01, rel=1e-12)
    assert lr(99, 25, min_lr=0.01) == pytest.approx(0.01, rel=1e-12)  # stays at min_lr past the end
    assert lr(0, 0, warmup_steps=0) == pytest.approx(0.1, rel=1e-12)  # no warmup


def test_warmup_step_cosine_values():
    lr = lambda step, **kw: warmup_step_cosine_lr(  # noqa: E731
        0.2, step, **{"warmup_steps": 5, "total_steps": 105, "min_lr": 0.02, **kw})
    assert lr(0) == pytest.approx(0.04, rel=1e-12)
    assert lr(2) == pytest.approx(0.12, rel=1e-12)
    assert lr(4) == pytest.approx(0.2, rel=1e-12)
    assert lr(5) == pytest.approx(0.2, rel=1e-12)  # cosine starts at base_lr
    assert lr(55) == pytest.approx(0.11, rel=1e-12)  # half way down
    assert lr(104) == pytest.approx(0.02 + 0.09 * (1 + math.cos(math.pi * 99 / 100)), rel=1e-12)
    assert lr(105) == pytest.approx(0.02, rel=1e-12)
    assert lr(1000) == pytest.approx(0.02, rel=1e-12)
    assert lr(0, warmup_steps=0) == pytest.approx(0.2, rel=1e-12)
    assert lr(0, warmup_steps=0, total_steps=1) == pytest.approx(0.2, rel=1e-12)


@pytest.mark.parametrize("kwargs", [dict(base_lr=0.0), dict(warmup_steps=-1), dict(epochs=0),
                                    dict(min_lr=0.5), dict(min_lr=-0.1)])
def test_schedule_rejects_nonsense(kwargs):
    args = {"base_lr": 0.1, "warmup_steps": 2, "epochs": 3, "min_lr": 0.0, **kwargs}
    with pytest.raises(ValueError):
        WarmupEpochCosine(**args)
    with pytest.raises(ValueError):
        warmup_epoch_cosine_lr(args.pop("base_lr"), 0, 0, **args)


# -- inside paddle.Model.fit ----------------------------------------------------

def test_epoch_cosine_sets_the_lr_of_every_batch_in_fit():
    sched, rec = WarmupEpochCosine(0.1, warmup_steps=4, epochs=3, min_lr=0.01), LRRecorder()
    fit([sched, rec], epochs=3)
    expected = [warmup_epoch_cosine_lr(0.1, s, s // STEPS_PER_EPOCH, warmup_steps=4, epochs=3, min_lr=0.01)
                for s in range(3 * STEPS_PER_EPOCH)]
    assert rec.lrs == expected  # exactly what set_lr was given
    assert rec.tensor_lrs == pytest.approx(expected, rel=1e-6)  # the float32 the update used
    # step 3 is in epoch 1 but still warming up; step 4 is on epoch 1's cosine value
    assert expected[3] == pytest.approx(0.1) and expected[4] == pytest.approx(0.01 + 0.09 * 0.75)
    assert sched.global_step == 9 and sched.epoch == 3 and sched.last_lr == expected[-1]
    assert sched.state_dict() == {"global_step": 9, "epoch": 3}


def test_step_cosine_sets_the_lr_of_every_batch_in_fit():
    sched, rec = WarmupStepCosine(0.05, warmup_steps=2, total_steps=9), LRRecorder()
    fit([sched, rec], epochs=3)
    expected = [warmup_step_cosine_lr(0.05, s, warmup_steps=2, total_steps=9) for s in range(9)]
    assert rec.lrs == expected
    assert rec.tensor_lrs == pytest.approx(expected, rel=1e-6)
    assert all(a > b for a, b in zip(expected[2:], expected[3:]))  # decays every step


def test_state_dict_resumes_the_schedule_in_a_new_fit():
    first = WarmupEpochCosine(0.1, warmup_steps=4, epochs=3)
    fit([first], epochs=2)
    resumed, rec = WarmupEpochCosine(0.1, warmup_steps=4, epochs=3), LRRecorder()
    resumed.set_state_dict(first.state_dict())
    fit([resumed, rec], epochs=1)  # fit numbers this epoch 0: the callback knows it is epoch 2
    expected = [warmup_epoch_cosine_lr(0.1, s, 2, warmup_steps=4, epochs=3) for s in range(6, 9)]
    assert rec.lrs == expected
    assert resumed.state_dict() == {"global_step": 9, "epoch": 3}


def test_lr_scheduler_optimizer_is_refused_with_a_clear_error():
    model = tiny_model()
    net = model.network
    model.prepare(paddle.optimizer.Momentum(learning_rate=paddle.optimizer.lr.StepDecay(0.1, 2),
                                            parameters=net.parameters()), paddle.nn.CrossEntropyLoss())
    with pytest.raises(RuntimeError, match="float learning_rate"):
        fit([WarmupStepCosine(0.1, 1, 3)], epochs=1, model=model)


# -- VisualDL ----------------------------------------------------------------------

def read_scalars(log_dir):
    files = [f for f in os.listdir(log_dir) if f.startswith("vdlrecords")]
    assert len(files) == 1, files
    reader = LogReader(file_path=os.path.join(log_dir, files[0]))
    return {tag: [(r.id, r.value) for r in reader.get_data("scalar", tag)]
            for tag in reader.get_tags()["scalar"]}


class EvalBatches(paddle.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.per_eval = []

    def on_eval_begin(self, logs=None):
        self.per_eval.append([])

    def on_eval_batch_end(self, step, logs=None):
        self.per_eval[-1].append((logs["loss"][0], logs["batch_size"]))


def test_visualdl_logger_writes_train_eval_lr_and_params(tmp_path):
    log_dir = str(tmp_path / "vdl")
    sched = WarmupEpochCosine(0.1, warmup_steps=4, epochs=2)
    logger, rec, evals = VisualDLLogger(log_dir), LRRecorder(), EvalBatches()
    model = fit([sched, logger, rec, evals], epochs=2, eval_data=RandomImages(EVAL_N, seed=1))
    assert not hasattr(logger, "writer")  # closed at train end

    scalars = read_scalars(log_dir)
    steps = list(range(1, 2 * STEPS_PER_EPOCH + 1))
    for tag in ("train/loss", "train/acc_top1", "train/acc_top5", "train/lr"):
        assert [s for s, _ in scalars[tag]] == steps, tag
    expected_lr = [warmup_epoch_cosine_lr(0.1, s, s // STEPS_PER_EPOCH, warmup_steps=4, epochs=2)
                   for s in range(2 * STEPS_PER_EPOCH)]
    assert [v for _, v in scalars["train/lr"]] == pytest.approx(expected_lr, rel=1e-6)
    assert [v for _, v in scalars["train/lr"]] == pytest.approx(rec.lrs, rel=1e-6)

    for tag in ("eval/loss", "eval/acc_top1", "eval/acc_top5"):
        assert [s for s, _ in scalars[tag]] == [0, 1], tag
    # eval/loss is the mean over the eval set, not Paddle's last-batch loss
    means = [sum(l * n for l, n in batches) / sum(n for _, n in batches) for batches in evals.per_eval]
    assert [v for _, v in scalars["eval/loss"]] == pytest.approx(means, rel=1e-6)

    count = count_parameters(model.network)
    assert scalars["model/trainable_params"] == [(0, count.trainable)]
    assert scalars["model/total_params"] == [(0, count.total)]


def test_visualdl_logger_uses_the_given_param_count_and_only_rank0_writes(tmp_path, monkeypatch):
    log_dir = str(tmp_path / "vdl")
    fit([VisualDLLogger(log_dir, param_count=ParamCount(trainable=123, total=4567, trainable_bytes=492))],
        epochs=1)
    scalars = read_scalars(log_dir)
    assert scalars["model/trainable_params"] == [(0, 123)]
    assert scalars["model/total_params"] == [(0, 4567)]

    monkeypatch.setenv("PADDLE_TRAINER_ID", "1")
    other = str(tmp_path / "rank1")
    fit([VisualDLLogger(other)], epochs=1)
    assert not os.path.exists(other)
