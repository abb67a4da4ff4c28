"""One training stage (pretraining or transfer) on ``paddle.Model``.

``train.py`` and ``transfer.py`` are thin command lines over :func:`run_stage`;
notebooks call it directly.
"""
from __future__ import annotations

import copy
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import paddle
from paddle.static import InputSpec

from ..config import Config, transfer_method
from ..data import build_datasets
from ..data.sampler import EpochBatchSampler, SeededDataset
from ..errors import CheckpointError, CheckpointWriteError, ConfigError
from ..methods import adapter_file_meta
from ..methods.build import apply_freezing, apply_transfer_method, build_model
from ..methods.trainable import ParamCount, count_parameters, trainable_parameters
from ..models.vit import VisionTransformer
from ..runs.adapter_file import load_adapter, save_adapter
from ..runs.checkpoint import atomic_save, load_weights
from ..runs.layout import run_dir
from ..runs.pretrained import load_pretrained, pretrained_normalization, resolve_pretrained
from .callbacks import (BestAndFinalCheckpoint, EpochProgBar, EpochSetup, TrainingGuard, VisualDLLogger,
                        WarmupEpochCosine, WarmupStepCosine)
from .resume import (RESUME_FILE, TOOLS, ResumePoint, StopRequest, TrainingError, TrainingInterrupted,
                     capture, ensure_writable, gather_rng_states, prepare_resume, rank_and_size,
                     remap_optimizer_state, restore_global_rng, stop_on_sigint)



@dataclass
class StageResult:
    run_dir: Path
    params: ParamCount
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    final: dict = field(default_factory=dict)
    seconds: float = 0.0












def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)






def prepare_model(cfg: Config, stage: str, class_num: int, log: Callable[[str], None] = print,
                  pretrained: Path | None = None) -> tuple[VisionTransformer, ParamCount]:
    """Build the model of a stage, load its pretrained weights (transfer: ``pretrained``,
    from :func:`resolve_pretrained`), freeze, and report the count."""
    model = build_model(cfg, class_num)
    if stage == "transfer":
        path = pretrained
        if path is not None:
            kept = load_pretrained(model, path, log)
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


def adapter_meta(cfg: Config, model: paddle.nn.Layer) -> dict:
    """What an adapter file records to be applied again: method, its options, model."""
    return {**adapter_file_meta(model, transfer_method(cfg)), "model": cfg.to_dict()["model"]}


def _quiet(line: str) -> None:
    """The log of processes other than rank 0: they print nothing."""


def _already_finished(point: ResumePoint, log: Callable[[str], None]) -> StageResult:
    """``--resume`` of a run that finished: nothing to train; report what it has."""
    record, meta = point.state.get("record") or {}, point.state.get("meta") or {}
    counts = meta.get("params") or {}
    params = ParamCount(trainable=int(counts.get("trainable", 0)), total=int(counts.get("total", 0)),
                        trainable_bytes=4 * int(counts.get("trainable", 0)), head=int(counts.get("head", 0)))
    result = StageResult(point.run_dir, params, list(record.get("history") or []), record.get("best") or {},
                         record.get("final") or {}, 0.0)
    log(f"nothing to resume: {point.run_dir} finished all {point.epochs} epochs")
    log(summary_lines(result, min(5, len(meta.get("class_names") or [None] * 5))))
    return result


def run_stage(cfg: Config, stage: str, *, log: Callable[[str], None] = print,
              verbose: int = 2, resume: bool | str | Path | ResumePoint | None = None) -> StageResult:
    """Train one stage end to end: data, model, fit with eval each epoch, checkpoints, logs.

    Every epoch writes ``resume.pdckpt`` in the run directory (see :mod:`ppadapt.training.resume`).
    ``resume``: ``True`` continues this config and stage's run from it, a path continues
    the run of that directory or checkpoint file, a :class:`ResumePoint` (from
    :func:`ppadapt.training.resume.prepare_resume`) is used as it is; the run keeps the config saved
    in its checkpoint. Launched with several processes (``paddle.distributed.launch``),
    ``paddle.Model`` trains data-parallel; each process takes its share of every epoch's
    batches and only rank 0 writes files and prints.
    """
    rank, nranks = rank_and_size()
    main = rank == 0
    if not main:
        log = _quiet
    point: ResumePoint | None = None
    if resume is not None and resume is not False:
        point = resume if isinstance(resume, ResumePoint) else prepare_resume(cfg, stage, resume)
        cfg = point.cfg
        if point.finished:
            return _already_finished(point, log)
    st = cfg.stage(stage)
    out = point.run_dir if point else run_dir(cfg, stage)
    if point is None:
        # Resolved first: a missing checkpoint fails before any time is spent on the data.
        pretrained = resolve_pretrained(cfg, log) if stage == "transfer" else None
        # Images are normalised the way the pretrained weights expect (PaddleClas: 0.5/0.5).
        norm = pretrained_normalization(cfg.transfer.pretrained, pretrained) if stage == "transfer" else None
    else:  # every weight comes from the checkpoint; images are normalised as the run did
        saved = point.state.get("meta") or {}
        pretrained, norm = None, (saved["mean"], saved["std"], "as saved")
    if main:  # an unwritable output fails before any time is spent on data and training
        ensure_writable(out)
        if point is None and (out / RESUME_FILE).is_file():
            log(f"note: {out} holds a {RESUME_FILE} of an earlier run; this run replaces it after its first "
                "epoch (to continue the earlier run instead, stop now and add --resume)")
    seed_everything(cfg.seed)
    start = time.time()
    data = build_datasets(st.dataset, role=stage, img_size=cfg.model.img_size,
                          data_file=st.data_file, data_dir=st.data_dir, classes=st.classes,
                          augment=st.augment, normalization=norm[:2] if norm else None)
    log(f"{stage}: {st.dataset}, {len(data.train)} train / {len(data.test)} test images, "
        f"{data.num_classes} classes")
    if norm and point is None:
        log(f"normalisation: mean {tuple(data.mean)}, std {tuple(data.std)} ({norm[2]})")
    if point is None:
        model, params = prepare_model(cfg, stage, data.num_classes, log, pretrained)
    else:
        build_cfg = copy.deepcopy(cfg)
        build_cfg.transfer.resume_adapter = None  # the checkpoint has those tensors
        model, params = prepare_model(build_cfg, stage, data.num_classes, log, None)
        load_weights(model, point.state["model"])

    # Data order and augmentation depend only on (seed, epoch, sample): see ppadapt.data.sampler.
    train_set = SeededDataset(data.train, cfg.seed)
    sampler = EpochBatchSampler(len(train_set), st.batch_size, cfg.seed, num_replicas=nranks, rank=rank)
    train_loader = paddle.io.DataLoader(train_set, batch_sampler=sampler, num_workers=st.num_workers)
    if nranks > 1:  # each rank evaluates its share; paddle.Model gathers the predictions for the metrics
        test_loader = paddle.io.DataLoader(
            data.test, batch_sampler=paddle.io.DistributedBatchSampler(data.test, batch_size=st.batch_size),
            num_workers=st.num_workers)
    else:
        test_loader = paddle.io.DataLoader(data.test, batch_size=st.batch_size, shuffle=False,
                                           num_workers=st.num_workers)
    steps = len(sampler)
    topk = (1, min(5, data.num_classes))
    # With several processes paddle.Model itself calls init_parallel_env and wraps the
    # network in paddle.DataParallel (gradients all-reduced, weights identical on every rank).
    net = paddle.Model(model, inputs=[InputSpec([None, 3, cfg.model.img_size, cfg.model.img_size],
                                                "float32", "image")],
                       labels=[InputSpec([None, 1], "int64", "label")])
    optimizer = make_optimizer(model, cfg, stage)
    net.prepare(optimizer, paddle.nn.CrossEntropyLoss(), paddle.metric.Accuracy(topk=topk))
    if point is None:
        meta = {"stage": stage, "dataset": st.dataset,
                "method": transfer_method(cfg) if stage == "transfer" else "full",
                "class_names": data.class_names, "mean": list(data.mean), "std": list(data.std),
                "config": cfg.to_dict(),
                "params": {"trainable": params.trainable, "total": params.total,
                           "head": params.head, "without_head": params.without_head}}
    else:
        meta = dict(point.state.get("meta") or {})
    resume_path = out / RESUME_FILE
    saver = BestAndFinalCheckpoint(str(out), meta=meta)
    saver.resume_path = str(resume_path)
    lr_cb = lr_callback(cfg, stage, steps)
    start_epoch, skip = (point.epoch, point.batch) if point else (0, 0)
    saver.start_epoch = start_epoch
    paddle_rng = metric_state = None
    if point is not None:
        state = point.state
        paddle_rng, metric_state = _restore_training_state(
            state, model, optimizer, lr_cb, saver, rank=rank, nranks=nranks, steps=steps, log=log)
        where = f"epoch {start_epoch + 1}/{st.epochs}" + (f", batch {skip}/{steps}" if skip else "")
        log(f"resuming {point.path} at {where} (global step {int(state.get('global_step', 0))})")
    vdl = VisualDLLogger(str(out / "vdl"), param_count=params, start_epoch=start_epoch,
                         start_step=int(point.state.get("visualdl_step", 0)) if point else 0)

    def capture_state(*, epoch: int, batch: int, reason: str, paddle_rng: list, finished: bool = False) -> dict:
        return capture(stage=stage, cfg=cfg, meta=saver.meta, epochs=st.epochs, epoch=epoch, batch=batch,
                       steps_per_epoch=steps, nranks=nranks, network=model, optimizer=optimizer,
                       lr_callback=lr_cb, saver=saver, metrics=net._metrics,
                       visualdl_step=getattr(vdl, "train_step", lr_cb.global_step), paddle_rng=paddle_rng,
                       reason=reason, finished=finished)

    stop = StopRequest()
    launcher = f"python -m paddle.distributed.launch --nproc_per_node {nranks} " if nranks > 1 else "python "
    hint = f"{launcher}ppadapt/{TOOLS[stage]} --resume {out}"
    guard = TrainingGuard(resume_path, capture_state, epochs=st.epochs, steps_per_epoch=steps, stop=stop,
                          resume_hint=hint, start_epoch=start_epoch, skip=skip, nranks=nranks, is_main=main)
    callbacks = [EpochProgBar(st.log_freq, verbose, epochs=st.epochs, start_epoch=start_epoch), lr_cb,
                 EpochSetup(sampler, cfg.seed, rank, start_epoch=start_epoch, skip=skip,
                            paddle_rng=paddle_rng, metric_states=metric_state),
                 vdl, saver, guard]
    try:
        with stop_on_sigint(stop, announce=main):
            if start_epoch < st.epochs:
                net.fit(train_loader, test_loader, epochs=st.epochs - start_epoch, log_freq=st.log_freq,
                        verbose=verbose, callbacks=callbacks)
            else:  # every epoch was trained, but the run stopped before its final files
                saver.finish(model)
    except TrainingInterrupted:
        raise
    except KeyboardInterrupt:  # a second Ctrl-C, that did not wait for the end of the batch
        raise TrainingInterrupted(guard.interrupted_message()) from None
    except CheckpointWriteError as exc:  # best/final.pdparams or run.json (the file there is intact)
        raise guard.save_failed(exc) from None
    except OSError as exc:  # a full disk or lost permissions while writing the run's files
        if exc.filename and str(out.resolve()) in str(Path(exc.filename).resolve()):
            raise TrainingError(f"cannot write {exc.filename}: {exc.strerror or exc}; {guard._kept()}") from None
        raise
    finally:
        if hasattr(vdl, "writer"):  # flushed and closed even when training stops with an error
            vdl.writer.close()
            del vdl.writer
    if main:
        try:
            if stage == "transfer" and transfer_method(cfg) != "full":
                save_adapter(model, out / "adapter.pdparams", adapter_meta(cfg, model))
                log(f"adapter-only checkpoint: {out / 'adapter.pdparams'}")
            atomic_save(capture_state(epoch=st.epochs, batch=0, reason="finished",
                                      paddle_rng=gather_rng_states(1), finished=True), str(resume_path))
        except CheckpointWriteError as exc:
            raise guard.save_failed(exc) from None
    _test_dump_weights(model, rank)

    result = StageResult(out, params, saver.history, saver.best or {}, saver.final or {},
                         time.time() - start)
    log(summary_lines(result, topk[1]))
    return result


def _restore_training_state(state: dict, model: paddle.nn.Layer, optimizer: paddle.optimizer.Optimizer,
                            lr_cb: paddle.callbacks.Callback, saver: BestAndFinalCheckpoint, *, rank: int,
                            nranks: int, steps: int, log: Callable[[str], None]) -> tuple:
    """Put a resume checkpoint's optimizer, schedule, record and generators back; returns
    (this rank's Paddle generator state, metric states) for an epoch resumed part-way."""
    skip = int(state.get("batch", 0))
    saved_steps, saved_ranks = int(state.get("steps_per_epoch", steps)), int(state.get("nranks", 1))
    if skip and (saved_steps != steps or saved_ranks != nranks):
        raise CheckpointError(
            f"this checkpoint stopped part-way through an epoch with {saved_ranks} process(es) and {saved_steps} "
            f"batches per epoch; resume it with the same number of processes and batch size ({nranks} and "
            f"{steps} now)")
    if saved_steps != steps or saved_ranks != nranks:
        log(f"note: the run had {saved_ranks} process(es) and {saved_steps} batches per epoch, now {nranks} and "
            f"{steps}: it goes on, but not as the uninterrupted run would have")
    optimizer.set_state_dict(remap_optimizer_state(state["optimizer"], state.get("param_names") or {}, model))
    optimizer.set_lr(float(state["optimizer_lr"]))
    schedule = dict(state["lr_schedule"])
    lr_cb.set_state_dict(schedule)
    lr_cb.last_lr = schedule.get("last_lr")
    saver.set_state_dict(state["record"], mid_epoch=skip > 0)
    restore_global_rng(state)
    if not skip:
        return None, None
    rngs = list(state["rng"]["paddle"])
    return rngs[rank if len(rngs) == nranks else 0], state.get("metrics")


def _test_dump_weights(model: paddle.nn.Layer, rank: int) -> None:
    """Test-only: with ``PPADAPT_TEST_DUMP_DIR`` set, every rank saves its final weights
    there as ``rank<N>.pdparams`` (to check that the processes stayed in sync)."""
    folder = os.environ.get("PPADAPT_TEST_DUMP_DIR")
    if folder:
        atomic_save(model.state_dict(), os.path.join(folder, f"rank{rank}.pdparams"))


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
