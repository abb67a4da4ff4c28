"""``paddle.Model`` with its optimizer, schedule and callbacks for one stage, fit with the
errors a user can act on turned into one-line messages, and the run's last files.

A resumed run gets the same objects, then puts back the checkpoint's optimizer state,
schedule, record and generators (:meth:`Trainer._restore`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import paddle

from ..config import Config, transfer_method
from ..config.recipes import describe_recipe
from ..errors import CheckpointError, CheckpointWriteError, TrainingError, TrainingInterrupted
from ..methods import adapter_file_meta
from ..methods.groups import parameter_groups
from ..methods.trainable import ParamCount
from ..runs.adapter_file import ADAPTER_DIR, LEGACY_FILE, save_adapter
from ..runs.checkpoint import atomic_save
from ..runs.layout import default_pretrained
from ..runs.record import RunRecord
from ..runs.resume_file import RESUME_FILE, TOOLS
from .callbacks import (AdaptationMonitor, BestAndFinalCheckpoint, EpochProgBar, EpochSetup, EvalLossMean,
                        TrainingGuard, ValidationEval, VisualDLLogger)
from .callbacks.adaptation import probe_batch
from .data_loading import StageData
from .loss import make_loss
from .mixing import soft_target_loss
from .optim import lr_callback
from .plan import StagePlan
from .precision import restore_scaler, scaler_state, stage_network
from .resume import (capture, gather_rng_states, master_weights_as_tensors, remap_optimizer_state,
                     restore_global_rng)
from .signals import StopRequest, stop_on_sigint


def adapter_meta(cfg: Config, model: paddle.nn.Layer, data: StageData | None = None,
                 pretrained: Path | None = None) -> dict:
    """What an adapter records to be applied again and to serve its task: method, its options,
    the model section, and (given the stage's ``data``) the class names and how images were
    normalised and resized; ``base_model`` is the backbone it was trained on, as the config
    gives it (``pretrained``: the file that resolved to, when the config leaves it implicit)."""
    meta = {**adapter_file_meta(model, transfer_method(cfg)), "model": cfg.to_dict()["model"]}
    if data is not None:
        meta.update(class_names=[str(c) for c in data.class_names], mean=[float(v) for v in data.mean],
                    std=[float(v) for v in data.std])
    meta["eval_resize"] = cfg.transfer.eval_resize
    given = cfg.transfer.pretrained
    if given is not None and given.lower() == "none":
        meta["base_model"] = None
    else:
        meta["base_model"] = given or (str(pretrained) if pretrained else str(default_pretrained(cfg)))
    return meta


def record_header(plan: StagePlan, data: StageData, params: ParamCount) -> RunRecord:
    """run.json's fields besides the history, for a fresh run (a resumed one keeps its own)."""
    cfg, stage = plan.cfg, plan.stage
    return RunRecord.header(stage=stage, dataset=cfg.stage(stage).dataset,
                            method=transfer_method(cfg) if stage == "transfer" else "full",
                            class_names=data.class_names, mean=data.mean, std=data.std,
                            config=cfg.to_dict(), params=params,
                            selected_on="test" if data.val_loader is None else "val",
                            schedule_rule=plan.schedule_rule)


class Trainer:
    """The training objects of one stage; :meth:`fit` trains, :meth:`finish` writes the end files."""

    def __init__(self, plan: StagePlan, model: paddle.nn.Layer, params: ParamCount, data: StageData, *,
                 rank: int, nranks: int, verbose: int, log: Callable[[str], None],
                 callbacks: Sequence[paddle.callbacks.Callback] = ()) -> None:
        cfg, stage, out = plan.cfg, plan.stage, plan.run_dir
        st = cfg.stage(stage)
        self.plan, self.model, self.data, self.nranks, self.is_main = plan, model, data, nranks, rank == 0
        self.epochs, self.steps = st.epochs, len(data.sampler)
        self.topk = (1, min(5, data.num_classes))
        self.resume_path = out / RESUME_FILE
        method = transfer_method(cfg) if stage == "transfer" else "full"
        # With several processes paddle.Model itself calls init_parallel_env and wraps the
        # network in paddle.DataParallel (gradients all-reduced, weights identical on every rank);
        # mixed precision prepares the network before that (precision.make_network).
        self.net, self.optimizer, amp = stage_network(model, cfg, stage, method, nranks=nranks)
        if amp is not None:
            log(f"mixed precision: {stage}.amp {amp.level} in {amp.dtype}"
                + (" with dynamic loss scaling" if amp.scales_loss else "")
                + ("; the method's parameters and the head in float32" if amp.level == "O2" else ""))
        recipe = describe_recipe(cfg, method) if stage == "transfer" else None
        if recipe:
            log(recipe)
        if st.lr_scale != "none":
            log(f"learning rate {st.lr} x batch {st.batch_size} x {nranks} process(es) / 256 ({st.lr_scale}): "
                f"{self.optimizer.get_lr():g}")
        # MixUp/CutMix: soft targets in training, with the label smoothing folded in
        loss = soft_target_loss(make_loss(cfg, stage), st, smoothing=st.label_smoothing)
        self.net.prepare(self.optimizer, loss, paddle.metric.Accuracy(topk=self.topk))
        meta = dict(plan.saved.get("meta") or {}) if plan.resumed else record_header(plan, data, params)
        eval_loss = EvalLossMean()  # one mean of the eval loss, for run.json and VisualDL
        # val_split / val_dir: evaluated after each test evaluation, it chooses the best epoch
        validation = None if data.val_loader is None else ValidationEval(data.val_loader, self.topk,
                                                                         start_epoch=plan.start_epoch)
        self.saver = BestAndFinalCheckpoint(str(out), meta=meta, start_epoch=plan.start_epoch,
                                            resume_path=str(self.resume_path), eval_loss=eval_loss,
                                            validation=validation, save_format=cfg.save_format)
        self.lr = lr_callback(cfg, stage, self.steps, nranks=nranks)
        paddle_rng = metric_states = None
        if plan.resumed:
            paddle_rng, metric_states = self._restore(rank, log)
        self.vdl = VisualDLLogger(str(out / "vdl"), param_count=params, start_epoch=plan.start_epoch,
                                  start_step=int(plan.saved.get("visualdl_step", 0)), eval_loss=eval_loss)
        if validation is not None:
            validation.vdl = self.vdl  # val/* curves beside the test set's eval/*
        # how far each group of trainable weights moved since the run's start (adapt/* tags, run.json)
        self.adapt = AdaptationMonitor(model, parameter_groups(model, method),
                                       probe_images=probe_batch(data.bundle.test) if self.is_main else None,
                                       vdl=self.vdl, saver=self.saver, start_epoch=plan.start_epoch,
                                       resumed=plan.resumed, state=plan.saved.get("adaptation"),
                                       active=self.is_main, log=log)
        self.stop = StopRequest()
        launcher = f"python -m paddle.distributed.launch --nproc_per_node {nranks} " if nranks > 1 else "python "
        self.guard = TrainingGuard(self.resume_path, self.capture, epochs=self.epochs, steps_per_epoch=self.steps,
                                   stop=self.stop, resume_hint=f"{launcher}ppadapt/{TOOLS[stage]} --resume {out}",
                                   start_epoch=plan.start_epoch, skip=plan.skip, nranks=nranks,
                                   is_main=self.is_main)
        self.callbacks = [EpochProgBar(st.log_freq, verbose, epochs=self.epochs, start_epoch=plan.start_epoch),
                          self.lr,
                          EpochSetup(data.sampler, cfg.seed, rank, start_epoch=plan.start_epoch, skip=plan.skip,
                                     paddle_rng=paddle_rng, metric_states=metric_states),
                          eval_loss, self.vdl, *([validation] if validation else []), self.saver, self.guard,
                          self.adapt, *callbacks]

    def _restore(self, rank: int, log: Callable[[str], None]) -> tuple:
        """Put a resume checkpoint's optimizer, schedule, record and generators back; returns
        (this rank's Paddle generator state, metric states) for an epoch resumed part-way."""
        state, nranks, steps = self.plan.saved, self.nranks, self.steps
        skip = int(state.get("batch", 0))
        saved_steps, saved_ranks = int(state.get("steps_per_epoch", steps)), int(state.get("nranks", 1))
        if skip and (saved_steps != steps or saved_ranks != nranks):
            raise CheckpointError(
                f"this checkpoint stopped part-way through an epoch with {saved_ranks} process(es) and "
                f"{saved_steps} batches per epoch; resume it with the same number of processes and batch size "
                f"({nranks} and {steps} now)")
        if saved_steps != steps or saved_ranks != nranks:
            log(f"note: the run had {saved_ranks} process(es) and {saved_steps} batches per epoch, now {nranks} "
                f"and {steps}: it goes on, but not as the uninterrupted run would have")
        self.optimizer.set_state_dict(master_weights_as_tensors(
            remap_optimizer_state(state["optimizer"], state.get("param_names") or {}, self.model)))
        self.optimizer.set_lr(float(state["optimizer_lr"]))
        schedule = dict(state["lr_schedule"])
        self.lr.set_state_dict(schedule)
        self.lr.last_lr = schedule.get("last_lr")
        self.saver.set_state_dict(state["record"], mid_epoch=skip > 0)
        restore_scaler(self.net, state.get("amp_scaler"))
        restore_global_rng(state)
        where = f"epoch {self.plan.start_epoch + 1}/{self.epochs}" + (f", batch {skip}/{steps}" if skip else "")
        log(f"resuming {self.plan.point.path} at {where} (global step {int(state.get('global_step', 0))})")
        if not skip:
            return None, None
        rngs = list(state["rng"]["paddle"])
        return rngs[rank if len(rngs) == nranks else 0], state.get("metrics")

    def capture(self, *, epoch: int, batch: int, reason: str, paddle_rng: list, finished: bool = False) -> dict:
        """The resume checkpoint at this point of the run (see :mod:`ppadapt.training.resume`)."""
        return capture(stage=self.plan.stage, cfg=self.plan.cfg, meta=self.saver.meta, epochs=self.epochs,
                       epoch=epoch, batch=batch, steps_per_epoch=self.steps, nranks=self.nranks,
                       network=self.model, optimizer=self.optimizer, lr_callback=self.lr, saver=self.saver,
                       metrics=self.net._metrics,
                       visualdl_step=getattr(self.vdl, "train_step", self.lr.global_step), paddle_rng=paddle_rng,
                       reason=reason, finished=finished, adaptation=self.adapt.state_dict(),
                       amp_scaler=scaler_state(self.net))

    def fit(self, verbose: int) -> None:
        """Train the remaining epochs, evaluating after each; Ctrl-C, a full disk or a failed
        save end in one line that says what was kept and how to go on."""
        out, st = self.plan.run_dir, self.plan.cfg.stage(self.plan.stage)
        try:
            with stop_on_sigint(self.stop, announce=self.is_main):
                if self.plan.start_epoch < self.epochs:
                    self.net.fit(self.data.train_loader, self.data.test_loader,
                                 epochs=self.epochs - self.plan.start_epoch, log_freq=st.log_freq,
                                 verbose=verbose, callbacks=self.callbacks)
                else:  # every epoch was trained, but the run stopped before its final files
                    self.saver.finish(self.model)
        except TrainingInterrupted:
            raise
        except KeyboardInterrupt:  # a second Ctrl-C, that did not wait for the end of the batch
            raise TrainingInterrupted(self.guard.interrupted_message()) from None
        except CheckpointWriteError as exc:  # best/final.pdparams or run.json (the file there is intact)
            raise self.guard.save_failed(exc) from None
        except OSError as exc:  # a full disk or lost permissions while writing the run's files
            if exc.filename and str(out.resolve()) in str(Path(exc.filename).resolve()):
                raise TrainingError(f"cannot write {exc.filename}: {exc.strerror or exc}; "
                                    f"{self.guard.kept()}") from None
            raise
        finally:  # flushed and closed even when training stops with an error
            self.vdl.close()

    def finish(self, log: Callable[[str], None]) -> None:
        """The adapter-only folder (a parameter-efficient transfer) and the finished resume checkpoint."""
        if not self.is_main:
            return
        out, cfg = self.plan.run_dir, self.plan.cfg
        try:
            if self.plan.stage == "transfer" and transfer_method(cfg) != "full":
                folder = save_adapter(self.model, out / ADAPTER_DIR,
                                      adapter_meta(cfg, self.model, self.data, self.plan.pretrained))
                log(f"adapter-only checkpoint: {folder}/ (adapter_model.safetensors + adapter_config.json)")
                if (out / LEGACY_FILE).is_file():  # an older ppadapt's, of an earlier run in this folder
                    (out / LEGACY_FILE).unlink()
                    log(f"removed {out / LEGACY_FILE} of an earlier run (an older ppadapt's format; {folder}/ "
                        "replaces it)")
            atomic_save(self.capture(epoch=self.epochs, batch=0, reason="finished",
                                     paddle_rng=gather_rng_states(1), finished=True), str(self.resume_path))
        except CheckpointWriteError as exc:
            raise self.guard.save_failed(exc) from None
