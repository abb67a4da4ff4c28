"""One training stage (pretraining or transfer) on ``paddle.Model``.

``train.py`` and ``transfer.py`` are thin command lines over :func:`run_stage`;
notebooks call it directly.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import paddle
from paddle.static import InputSpec

from .callbacks import BestAndFinalCheckpoint, VisualDLLogger, WarmupEpochCosine, WarmupStepCosine
from .adapter_file import load_adapter, save_adapter
from .checkpoint import load_state_dict, load_weights
from .config import Config, transfer_method
from .data import build_datasets
from .errors import CheckpointError, ConfigError, DataError
from .freeze import ParamCount, count_parameters, set_trainable, trainable_parameters
from .methods import Method, get_method
from .methods.adaptformer import apply_adaptformer, is_adapter_parameter
from .models.vit import VisionTransformer

KNOWN_CLASS_COUNTS = {"cifar10": 10, "cifar100": 100, "digits": 5}


@dataclass
class StageResult:
    run_dir: Path
    params: ParamCount
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    final: dict = field(default_factory=dict)
    seconds: float = 0.0


def build_model(cfg: Config, class_num: int) -> VisionTransformer:
    """The plain ViT of ``cfg.model``, with AdaptFormer branches if ``cfg.adapter.enabled``."""
    model = VisionTransformer(cfg.model, class_num=class_num)
    if cfg.adapter.enabled:
        apply_adaptformer(model, cfg.adapter.method_config())
    return model


def apply_freezing(model: paddle.nn.Layer, freeze: bool) -> None:
    """Frozen: only the AdaptFormer branches and the head train. Otherwise everything does."""
    set_trainable(model, get_method("adaptformer" if freeze else "full").is_trainable)


def apply_transfer_method(model: VisionTransformer, cfg: Config) -> Method:
    """Inject the transfer method into ``model`` and freeze everything it does not own.

    AdaptFormer reuses the branches the model already has (the tutorial pretrains
    them); every other method comes on top of the whole pretrained network.
    """
    method = get_method(transfer_method(cfg))
    if method.name == "adaptformer" and not cfg.adapter.enabled:
        apply_adaptformer(model, cfg.adapter.method_config())
    elif method.name != "adaptformer":
        method.apply_to(model, **cfg.method.options)
    set_trainable(model, method.is_trainable)
    return method


def run_dir(cfg: Config, stage: str) -> Path:
    st = cfg.stage(stage)
    name = f"{cfg.name}_{stage}_{st.dataset}"
    if stage == "transfer":
        method = transfer_method(cfg)
        name += {"adaptformer": "_frozen", "full": "_full"}.get(method, f"_{method}")
    return Path(cfg.output) / name


def default_pretrained(cfg: Config) -> Path:
    """Where ``train.py`` with the same config writes its final checkpoint."""
    return run_dir(cfg, "pretrain") / "final.pdparams"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def class_count(cfg: Config, stage: str) -> int:
    """Number of classes of a stage's dataset without loading it (for ``--dry-run``)."""
    st = cfg.stage(stage)
    if st.classes:
        return len(st.classes)
    if st.dataset in KNOWN_CLASS_COUNTS:
        return KNOWN_CLASS_COUNTS[st.dataset]
    train = Path(st.data_dir or "") / "train"
    if not st.data_dir or not train.is_dir():
        raise DataError(f"image folder {train} not found (pass --data-dir DIR with DIR/train/<class>/*)")
    return sum(1 for p in train.iterdir() if p.is_dir())


def load_pretrained(model: paddle.nn.Layer, path: str | Path) -> list[str]:
    """Load a backbone checkpoint for transfer: the head is always new, and the
    AdaptFormer branches may be absent (e.g. a PaddleClas ViT); anything else must match."""
    state = load_state_dict(str(path))
    return load_weights(model, state, skip=lambda k: k.startswith("head."),
                        allow_missing=is_adapter_parameter)


def prepare_model(cfg: Config, stage: str, class_num: int, log: Callable[[str], None] = print,
                  pretrained: Path | None = None) -> tuple[VisionTransformer, ParamCount]:
    """Build the model of a stage, load its pretrained weights (transfer: ``pretrained``,
    from :func:`resolve_pretrained`), freeze, and report the count."""
    model = build_model(cfg, class_num)
    if stage == "transfer":
        path = pretrained
        if path is not None:
            kept = load_pretrained(model, path)
            log(f"loaded pretrained weights from {path}"
                + (f" ({len(kept)} new tensors left at init)" if kept else ""))
        apply_transfer_method(model, cfg)
        if cfg.transfer.resume_adapter:
            load_adapter(model, cfg.transfer.resume_adapter, transfer_method(cfg))
            log(f"loaded adapter {cfg.transfer.resume_adapter}")
    else:
        apply_freezing(model, False)
    params = count_parameters(model)
    log(str(params))
    return model, params


def resolve_pretrained(cfg: Config) -> Path | None:
    value = cfg.transfer.pretrained
    if value is not None and value.lower() == "none":
        return None
    path = Path(value) if value else default_pretrained(cfg)
    if not path.is_file():
        how = (f"run `python ppadapt/train.py --pretrain {cfg.pretrain.dataset}"
               f"{'' if cfg.name == 'tutorial' else ' --config <same config>'}` first, "
               "pass --pretrained PATH, or --pretrained none to start from scratch")
        raise CheckpointError(f"pretrained checkpoint not found: {path} ({how})")
    return path


def make_optimizer(model: paddle.nn.Layer, cfg: Config, stage: str) -> paddle.optimizer.Optimizer:
    """Momentum over the trainable parameters only (frozen ones never reach it)."""
    st = cfg.stage(stage)
    params = trainable_parameters(model)
    if not params:
        raise ConfigError("nothing to train: every parameter is frozen (enable adapter or drop --freeze)")
    return paddle.optimizer.Momentum(
        learning_rate=st.lr, momentum=st.momentum, parameters=params,
        weight_decay=paddle.regularizer.L2Decay(st.weight_decay) if st.weight_decay else None)


def lr_callback(cfg: Config, stage: str, steps_per_epoch: int) -> paddle.callbacks.Callback:
    st = cfg.stage(stage)
    if st.schedule == "warmup_step_cosine":
        return WarmupStepCosine(st.lr, st.warmup_steps, st.epochs * steps_per_epoch, st.min_lr)
    return WarmupEpochCosine(st.lr, st.warmup_steps, st.epochs, st.min_lr)


def adapter_meta(cfg: Config) -> dict:
    """What an adapter file records to be applied again: method, its options, model."""
    return {"method": transfer_method(cfg), "options": cfg.method.options,
            "adapter": cfg.to_dict()["adapter"], "model": cfg.to_dict()["model"]}


def run_stage(cfg: Config, stage: str, *, log: Callable[[str], None] = print,
              verbose: int = 2) -> StageResult:
    """Train one stage end to end: data, model, fit with eval each epoch, checkpoints, logs."""
    st = cfg.stage(stage)
    # Resolved first: a missing checkpoint fails before any time is spent on the data.
    pretrained = resolve_pretrained(cfg) if stage == "transfer" else None
    seed_everything(cfg.seed)
    start = time.time()
    data = build_datasets(st.dataset, role=stage, img_size=cfg.model.img_size,
                          data_file=st.data_file, data_dir=st.data_dir, classes=st.classes,
                          augment=st.augment)
    log(f"{stage}: {st.dataset}, {len(data.train)} train / {len(data.test)} test images, "
        f"{data.num_classes} classes")
    model, params = prepare_model(cfg, stage, data.num_classes, log, pretrained)

    out = run_dir(cfg, stage)
    out.mkdir(parents=True, exist_ok=True)
    train_loader = paddle.io.DataLoader(data.train, batch_size=st.batch_size, shuffle=True,
                                        num_workers=st.num_workers)
    test_loader = paddle.io.DataLoader(data.test, batch_size=st.batch_size, shuffle=False,
                                       num_workers=st.num_workers)
    topk = (1, min(5, data.num_classes))
    net = paddle.Model(model, inputs=[InputSpec([None, 3, cfg.model.img_size, cfg.model.img_size],
                                                "float32", "image")],
                       labels=[InputSpec([None, 1], "int64", "label")])
    net.prepare(make_optimizer(model, cfg, stage), paddle.nn.CrossEntropyLoss(),
                paddle.metric.Accuracy(topk=topk))
    meta = {"stage": stage, "dataset": st.dataset,
            "method": transfer_method(cfg) if stage == "transfer" else "full", "class_names": data.class_names,
            "mean": list(data.mean), "std": list(data.std), "config": cfg.to_dict(),
            "params": {"trainable": params.trainable, "total": params.total,
                       "head": params.head, "without_head": params.without_head}}
    saver = BestAndFinalCheckpoint(str(out), meta=meta)
    callbacks = [lr_callback(cfg, stage, len(train_loader)),
                 VisualDLLogger(str(out / "vdl"), param_count=params), saver]
    net.fit(train_loader, test_loader, epochs=st.epochs, log_freq=st.log_freq,
            verbose=verbose, callbacks=callbacks)
    if stage == "transfer" and transfer_method(cfg) != "full":
        save_adapter(model, out / "adapter.pdparams", adapter_meta(cfg))
        log(f"adapter-only checkpoint: {out / 'adapter.pdparams'}")

    result = StageResult(out, params, saver.history, saver.best or {}, saver.final or {},
                         time.time() - start)
    log(summary_lines(result, topk[1]))
    return result


def summary_lines(result: StageResult, k: int) -> str:
    def fmt(entry: dict) -> str:
        if not entry:
            return "n/a"
        return (f"top-1 {100 * entry['acc_top1']:.2f}%, top-{k} {100 * entry.get(f'acc_top{k}', float('nan')):.2f}%"
                f" (epoch {entry['epoch'] + 1})")
    out = result.run_dir
    return "\n".join([
        f"best eval:  {fmt(result.best)}",
        f"final eval: {fmt(result.final)}",
        f"checkpoints: {out / 'best.pdparams'}, {out / 'final.pdparams'} (run record: {out / 'run.json'})",
        f"VisualDL logs: {out / 'vdl'}  (view: visualdl --logdir {out.parent} --language en)",
    ])
