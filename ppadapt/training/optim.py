"""The optimizer and LR schedule of a stage, built from its config section.

Per-parameter settings (which parameters weight decay skips, layer-wise and head LR
multipliers) are decided here, once, and set on the parameters themselves, as a
``paddle.ParamAttr`` would: ``param.optimize_attr["learning_rate"]`` (a multiplier of the
optimizer's LR, so the schedule callbacks' ``set_lr`` still drives every parameter) and
``param.regularizer``. Parameter groups would be the other way, but ``paddle.Model`` trains
with ``optimizer.minimize``, which in Paddle 3.3 refuses them (and Paddle clips the gradients
of each group on its own, not their global norm). Every call sets these on every trainable
parameter, so nothing is left over from an optimizer built earlier on the same model.

The defaults (``optimizer: momentum``, ``no_decay: auto``, no multipliers, no clipping)
build exactly the optimizer of earlier versions: Momentum with coupled L2 on every
trainable parameter.
"""
from __future__ import annotations

import paddle

from ..config import SCHEDULE_RULES, Config, StageConfig
from ..errors import ConfigError
from ..methods.trainable import trainable_parameters
from .callbacks import WarmupEpochCosine, WarmupStepCosine
from .callbacks.lr_warmup import WarmupStepDecay
from .distributed import rank_and_size


def no_weight_decay(model: paddle.nn.Layer) -> set[str]:
    """The names of the parameters weight decay skips (timm's ``no_weight_decay``): every
    parameter of at most one dimension (biases, LayerNorm/BatchNorm scales and shifts, SSF's
    scales and shifts) and every name a sublayer declares with a ``no_weight_decay()`` method
    returning names relative to itself (the ViT: ``pos_embed``, ``cls_token``; VPT: its prompts).
    A model or method that wants a parameter left alone declares it there, not here."""
    names = {name for name, p in model.named_parameters() if len(p.shape) <= 1 or name.endswith(".bias")}
    for path, layer in [("", model), *model.named_sublayers()]:
        declared = getattr(layer, "no_weight_decay", None)
        if callable(declared):
            names.update(f"{path}.{n}" if path else n for n in declared())
    return names


def decay_skips(st: StageConfig) -> bool:
    """Whether weight decay skips :func:`no_weight_decay`'s parameters: ``no_decay: standard``,
    or ``auto`` with a new optimizer (``auto`` keeps Momentum's L2 on everything, as before)."""
    return st.no_decay == "standard" or (st.no_decay == "auto" and st.optimizer != "momentum")


def lr_multipliers(model: paddle.nn.Layer, st: StageConfig) -> dict[str, float]:
    """Each parameter's multiplier of the stage's LR: ``layer_decay ** (top - layer_id)`` with
    the model's ``layer_id(name)`` (top: the highest id, the head's; 1 there), times
    ``head_lr_mult`` for the classifier head (``head.*``)."""
    names = [name for name, _ in model.named_parameters()]
    mult = dict.fromkeys(names, 1.0)
    if st.layer_decay != 1.0:
        layer_id = getattr(model, "layer_id", None)
        if not callable(layer_id):
            raise ConfigError(f"layer_decay needs a model that numbers its layers (a layer_id(name) method); "
                              f"{type(model).__name__} has none: set layer_decay: 1")
        ids = {name: layer_id(name) for name in names}
        top = max(ids.values())
        mult = {name: st.layer_decay ** (top - ids[name]) for name in names}
    if st.head_lr_mult != 1.0:
        mult = {name: m * st.head_lr_mult if name.startswith("head.") else m for name, m in mult.items()}
    return mult


def effective_lr(st: StageConfig, nranks: int | None = None) -> float:
    """The stage's base LR: ``lr``, or with ``lr_scale: linear256`` ``lr * batch_size * nranks / 256``
    (the effective batch of all processes; ``nranks`` defaults to this launch's)."""
    if st.lr_scale == "linear256":
        nranks = rank_and_size()[1] if nranks is None else nranks
        return st.lr * st.batch_size * nranks / 256
    return st.lr


def make_optimizer(model: paddle.nn.Layer, cfg: Config, stage: str, *,
                   nranks: int | None = None) -> paddle.optimizer.Optimizer:
    """The stage's optimizer over the trainable parameters only (frozen ones never reach it).

    ``momentum``: Momentum with coupled L2 (``weight_decay`` added to the gradient); ``sgd``:
    plain SGD with the same L2 (for SGD the same as decoupled decay); ``adamw``: AdamW with
    decoupled decay (each step shrinks a parameter by ``lr * weight_decay``).
    """
    st = cfg.stage(stage)
    params = trainable_parameters(model)
    if not params:
        raise ConfigError("nothing to train: every parameter is frozen (choose a method that trains something: see transfer.py --list-methods)")
    names = {id(p): name for name, p in model.named_parameters()}
    skipped = no_weight_decay(model) if decay_skips(st) else set()
    mult = lr_multipliers(model, st)
    for p in params:
        p.optimize_attr["learning_rate"] = mult[names[id(p)]]
        p.regularizer = None
    lr = effective_lr(st, nranks)
    clip = paddle.nn.ClipGradByGlobalNorm(st.clip_grad_norm) if st.clip_grad_norm else None
    if st.optimizer == "adamw":
        decayed = {p.name for p in params if names[id(p)] not in skipped}
        return paddle.optimizer.AdamW(learning_rate=lr, beta1=st.betas[0], beta2=st.betas[1], epsilon=st.eps,
                                      parameters=params, weight_decay=st.weight_decay,
                                      apply_decay_param_fun=decayed.__contains__, grad_clip=clip)
    decay = paddle.regularizer.L2Decay(st.weight_decay) if st.weight_decay else None
    if skipped and decay is not None:  # L2 set per parameter: the ones skipped get none
        for p in params:
            if names[id(p)] not in skipped:
                p.regularizer = decay
        decay = None
    if st.optimizer == "sgd":
        return paddle.optimizer.SGD(learning_rate=lr, parameters=params, weight_decay=decay, grad_clip=clip)
    return paddle.optimizer.Momentum(learning_rate=lr, momentum=st.momentum, parameters=params,
                                     weight_decay=decay, grad_clip=clip)


def warmup_steps(st: StageConfig, steps_per_epoch: int) -> int:
    """The warm-up in batches: ``warmup_epochs`` epochs rounded to whole batches, else ``warmup_steps``."""
    if st.warmup_epochs is not None:
        return round(st.warmup_epochs * steps_per_epoch)
    return st.warmup_steps or 0


def lr_callback(cfg: Config, stage: str, steps_per_epoch: int, *,
                nranks: int | None = None) -> paddle.callbacks.Callback:
    """The warmup + decay schedule of ``stage`` (it sets the optimizer's LR every step)."""
    st = cfg.stage(stage)
    lr, warmup, total = effective_lr(st, nranks), warmup_steps(st, steps_per_epoch), st.epochs * steps_per_epoch
    if st.schedule in SCHEDULE_RULES:
        raise ConfigError(f"{stage}.schedule {st.schedule} is decided from the training set when run_stage "
                          "loads it (ppadapt.training.plan.settle_schedule); this config was not")
    if st.min_lr > lr:  # only a scaled LR gets here (validate compares min_lr with lr)
        raise ConfigError(f"{stage}.min_lr ({st.min_lr}) is above the learning rate {lr:g} that "
                          f"{stage}.lr_scale: {st.lr_scale} gives: lower {stage}.min_lr")
    if st.schedule == "step_decay":
        return WarmupStepDecay(lr, warmup, total, st.decay_at, st.decay_factor, st.min_lr)
    if st.schedule == "warmup_step_cosine":
        return WarmupStepCosine(lr, warmup, total, st.min_lr)
    return WarmupEpochCosine(lr, warmup, st.epochs, st.min_lr)
