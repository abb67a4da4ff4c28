"""One training stage (pretraining or transfer) as a pipeline on ``paddle.Model``.

plan (fresh or resumed, decided once) -> output folder -> data -> the schedule a rule takes
from the training set (``schedule: bit_hyperrule``) -> model -> loaders -> trainer -> fit ->
finish. ``train.py`` and ``transfer.py`` are thin command lines over
:func:`run_stage`; notebooks call it directly.
"""
from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import paddle

from ..config import Config, transfer_method
from ..errors import ConfigError, TrainingError
from ..methods.build import apply_freezing, apply_transfer_method, build_model
from ..methods.trainable import ParamCount, count_parameters
from ..models.fast_layers import fused_kernels_problem, layer_path, use_layers
from ..models.vit import VisionTransformer
from ..runs.adapter_file import load_adapter
from ..runs.checkpoint import load_weights
from ..runs.layout import find_weights
from ..runs.pretrained import load_pretrained
from ..runs.record import RunRecord
from ..utils.device import check_amp, use_device
from ..utils.files import ensure_writable
from .data_loading import load_datasets, make_loaders
from .distributed import rank_and_size
from .plan import StagePlan, plan_stage, settle_schedule
from ..runs.resume_file import RESUME_FILE
from .resume import ResumePoint
from .trainer import Trainer


@dataclass
class StageResult:
    run_dir: Path
    params: ParamCount
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    final: dict = field(default_factory=dict)
    seconds: float = 0.0
    selected_on: str = "test"  # the split that chose ``best`` (run.json's ``selected_on``)


def run_stage(cfg: Config, stage: str, *, log: Callable[[str], None] = print, verbose: int = 2,
              resume: bool | str | Path | ResumePoint | None = None,
              callbacks: Sequence[paddle.callbacks.Callback] = ()) -> StageResult:
    """Train one stage end to end: data, model, fit with eval each epoch, checkpoints, logs.

    Every epoch writes ``resume.pdckpt`` in the run directory (see :mod:`ppadapt.training.resume`).
    ``resume``: ``True`` continues this config and stage's run from it, a path continues
    the run of that directory or checkpoint file, a :class:`ResumePoint` is used as it is;
    the run keeps the config saved in its checkpoint. ``callbacks`` are extra
    ``paddle.callbacks.Callback`` objects, called after ppadapt's own. Launched with several
    processes (``paddle.distributed.launch``), ``paddle.Model`` trains data-parallel; each
    process takes its share of every epoch's batches and only rank 0 writes files and prints.
    """
    rank, nranks = rank_and_size()
    log = log if rank == 0 else _quiet
    plan = plan_stage(cfg, stage, resume, log)
    if plan.finished:
        return _already_finished(plan.point, log)
    settle_device(plan.cfg, stage)  # a device or precision this machine lacks: one line, before any file
    if rank == 0:
        prepare_output(plan, log)
    seed_everything(plan.cfg.seed)
    start = time.time()
    datasets = load_datasets(plan, log)
    plan = settle_schedule(plan, len(datasets.train), nranks, log)  # a rule's schedule needs the training set
    model, params = stage_model(plan, datasets.num_classes, log)
    data = make_loaders(plan, datasets, rank, nranks)
    trainer = Trainer(plan, model, params, data, rank=rank, nranks=nranks, verbose=verbose, log=log,
                      callbacks=callbacks)
    trainer.fit(verbose)
    trainer.finish(log)
    saver = trainer.saver
    result = StageResult(plan.run_dir, params, saver.history, saver.best or {}, saver.final or {},
                         time.time() - start, saver.header.best_selected_on)
    log(summary_lines(result, trainer.topk[1]))
    return result


def prepare_output(plan: StagePlan, log: Callable[[str], None]) -> None:
    """An unwritable output fails before any time is spent on data and training."""
    ensure_writable(plan.run_dir, TrainingError)
    if not plan.resumed and (plan.run_dir / RESUME_FILE).is_file():
        log(f"note: {plan.run_dir} holds a {RESUME_FILE} of an earlier run; this run replaces it after its "
            "first epoch (to continue the earlier run instead, stop now and add --resume)")


def settle_device(cfg: Config, stage: str) -> str:
    """Make the config's device Paddle's current one and check that it can run the stage's mixed
    precision (one ConfigError line otherwise); returns ``"cpu"`` or ``"gpu"``."""
    device = use_device(cfg.device)
    st = cfg.stage(stage)
    check_amp(stage, st.amp, st.amp_dtype, device)
    return device


def configure_training(model: paddle.nn.Layer, cfg: Config, stage: str,
                       log: Callable[[str], None] = print) -> str:
    """The model's training settings that are not architecture: which Linear/LayerNorm/GELU/softmax
    code runs (``model.layers``, decided by :func:`~ppadapt.models.fast_layers.layer_path` for the
    current device; ``fused`` falls back to ``fast``, with one line, where its kernels cannot be
    built) and the stage's ``recompute``; returns the layer path."""
    try:
        path = layer_path(cfg.model.layers)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if path == "fused" and (problem := fused_kernels_problem(log)):
        log(f"model.layers=fused: {problem}; training on the fast layers instead")
        path = "fast"
    use_layers(model, path)
    model.recompute = bool(cfg.stage(stage).recompute)
    return path


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def stage_model(plan: StagePlan, class_num: int, log: Callable[[str], None]) -> tuple[VisionTransformer, ParamCount]:
    """The stage's model: from the pretrained backbone (fresh), or from the checkpoint (resumed)."""
    if not plan.resumed:
        return prepare_model(plan.cfg, plan.stage, class_num, log, plan.pretrained)
    build_cfg = copy.deepcopy(plan.cfg)
    build_cfg.transfer.resume_adapter = None  # the checkpoint has those tensors
    model, params = prepare_model(build_cfg, plan.stage, class_num, log, None)
    load_weights(model, plan.saved["model"])
    return model, params


def prepare_model(cfg: Config, stage: str, class_num: int, log: Callable[[str], None] = print,
                  pretrained: Path | None = None) -> tuple[VisionTransformer, ParamCount]:
    """Build the model of a stage, load its pretrained weights (transfer: ``pretrained``,
    from :func:`~ppadapt.runs.pretrained.resolve_pretrained`), freeze, and report the count."""
    model = build_model(cfg, class_num)
    if stage == "transfer":
        if pretrained is not None:
            kept = load_pretrained(model, pretrained, log)
            log(f"loaded pretrained weights from {pretrained}"
                + (f" ({len(kept)} new tensors left at init)" if kept else ""))
        apply_transfer_method(model, cfg)
        if cfg.transfer.resume_adapter:
            load_adapter(model, cfg.transfer.resume_adapter, transfer_method(cfg))
            log(f"loaded adapter {cfg.transfer.resume_adapter}")
    else:
        apply_freezing(model, False)
    path = configure_training(model, cfg, stage, log)
    if path != "fast" or model.recompute:  # not the CPU default: say what runs
        log(f"device {paddle.device.get_device()}: {path} layers"
            + (", each block's activations recomputed in the backward" if model.recompute else ""))
    params = count_parameters(model)
    log(str(params))
    return model, params


def _quiet(line: str) -> None:
    """The log of processes other than rank 0: they print nothing."""


def _already_finished(point: ResumePoint, log: Callable[[str], None]) -> StageResult:
    """``--resume`` of a run that finished: nothing to train; report what it has."""
    record, meta = point.state.get("record") or {}, point.state.get("meta") or {}
    counts: dict[str, Any] = meta.get("params") or {}
    params = ParamCount(trainable=int(counts.get("trainable", 0)), total=int(counts.get("total", 0)),
                        trainable_bytes=4 * int(counts.get("trainable", 0)), head=int(counts.get("head", 0)))
    result = StageResult(point.run_dir, params, list(record.get("history") or []), record.get("best") or {},
                         record.get("final") or {}, 0.0, RunRecord.from_dict(meta).best_selected_on)
    log(f"nothing to resume: {point.run_dir} finished all {point.epochs} epochs")
    log(summary_lines(result, min(5, len(meta.get("class_names") or [None] * 5))))
    return result


def summary_lines(result: StageResult, k: int) -> str:
    """The end of a run's log: best and final test accuracy, the split that chose best, the files.

    The best line says ``selected on test`` (no validation split: an optimistic number) or
    ``selected on val`` (its test numbers at the best validation epoch, and that val top-1)."""
    def fmt(entry: dict, best: bool = False) -> str:
        if not entry:
            return "n/a"
        text = (f"top-1 {100 * entry['acc_top1']:.2f}%, top-{k} {100 * entry.get(f'acc_top{k}', float('nan')):.2f}%"
                f" (epoch {entry['epoch'] + 1}")
        val = entry.get("val_acc_top1")
        if best:
            text += f", selected on {result.selected_on}"
            return text + (f": val top-1 {100 * val:.2f}%)" if val is not None else ")")
        return text + (f"; val top-1 {100 * val:.2f}%)" if val is not None else ")")
    out = result.run_dir
    best, final = (find_weights(out, n) or out / f"{n}.pdparams" for n in ("best", "final"))
    return "\n".join([
        f"best eval:  {fmt(result.best, best=True)}",
        f"final eval: {fmt(result.final)}",
        f"checkpoints: {best}, {final} (run record: {out / 'run.json'})",
        f"VisualDL logs: {out / 'vdl'}  (view: visualdl --logdir {out.parent} --language en)",
    ])
