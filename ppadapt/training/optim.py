"""The optimizer and LR schedule of a stage, built from its config section."""
from __future__ import annotations

import paddle

from ..config import Config
from ..errors import ConfigError
from ..methods.trainable import trainable_parameters
from .callbacks import WarmupEpochCosine, WarmupStepCosine


def make_optimizer(model: paddle.nn.Layer, cfg: Config, stage: str) -> paddle.optimizer.Optimizer:
    """Momentum over the trainable parameters only (frozen ones never reach it)."""
    st = cfg.stage(stage)
    params = trainable_parameters(model)
    if not params:
        raise ConfigError("nothing to train: every parameter is frozen (choose a method that trains something: see transfer.py --list-methods)")
    return paddle.optimizer.Momentum(
        learning_rate=st.lr, momentum=st.momentum, parameters=params,
        weight_decay=paddle.regularizer.L2Decay(st.weight_decay) if st.weight_decay else None)


def lr_callback(cfg: Config, stage: str, steps_per_epoch: int) -> paddle.callbacks.Callback:
    """The warmup + cosine schedule of ``stage`` (it sets the optimizer's LR every step)."""
    st = cfg.stage(stage)
    if st.schedule == "warmup_step_cosine":
        return WarmupStepCosine(st.lr, st.warmup_steps, st.epochs * steps_per_epoch, st.min_lr)
    return WarmupEpochCosine(st.lr, st.warmup_steps, st.epochs, st.min_lr)
