"""Resumable training: the checkpoint every epoch writes, and continuing from it.

A run directory holds ``resume.pdckpt`` (written atomically, see
:func:`ppadapt.runs.checkpoint.atomic_save`, by the main process only) after every
evaluated epoch, when Ctrl-C stops a run (at the end of the batch in progress), and
once more when the run has finished (its name, format tag, finding and safely reading
it: :mod:`ppadapt.runs.resume_file`). It is one ``paddle.save`` dict:

=================  ==================================================================
``format``         ``"ppadapt.resume"``; ``version``: 1
``stage``          ``"pretrain"`` / ``"transfer"``; ``config``: the run's config dict
``meta``           what run.json records besides the history (class names, mean, std, ...)
``epochs``         total epochs of the run
``epoch``          the epoch to continue with (0-based; = epochs once all are done)
``batch``          batches of ``epoch`` already trained (0 at an epoch boundary)
``global_step``    batches trained in the whole run; ``steps_per_epoch``, ``nranks``
``finished``       True once final.pdparams (and the adapter/ folder) are written
``model``          the network's state dict (structured names)
``optimizer``      ``optimizer.state_dict()`` (momentum accumulators, by Paddle's tensor
                   names), ``optimizer_lr`` and ``param_names`` (structured name ->
                   Paddle name, to map the accumulators onto a model built in another order)
``lr_schedule``    the LR callback's ``state_dict()`` (global step, epoch) and its last LR
``record``         :class:`~ppadapt.training.callbacks.BestAndFinalCheckpoint`'s state: history,
                   best, final, and the running sums of an epoch stopped part-way
``metrics``        running state (``total``/``count``) of the train metrics (mid-epoch)
``visualdl_step``  the last train step written to VisualDL
``adaptation``     the start weights the ``adapt/*`` curves measure change from
                   (:class:`~ppadapt.training.callbacks.AdaptationMonitor`'s state)
``amp_scaler``     float16 mixed precision: the loss scaler's state (scale, counters); empty
                   otherwise. The O2 master weights are in ``optimizer`` (``master_weights``)
``rng``            Paddle's generator state per rank (pickled, as uint8 arrays), numpy's
                   and Python's global states
``reason``         ``"epoch"``, ``"interrupt"`` or ``"finished"``
=================  ==================================================================

What makes a resumed run identical to an uninterrupted one: the data order of every
epoch and each sample's augmentation are functions of (seed, epoch[, index])
(:mod:`ppadapt.data.sampler`); Paddle's generator (dropout, drop path) is reseeded from
(seed, epoch, rank) at the start of every epoch, or restored from the checkpoint when
the run continues an epoch part-way; everything else is in the checkpoint.
"""
from __future__ import annotations

import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import paddle

from ..config import Config, config_from_dict
from ..errors import CheckpointError, ConfigError
from ..runs.layout import run_dir
from ..runs.resume_file import FORMAT, VERSION, find_checkpoint, generator_state, load_checkpoint

# Options that say only where things are or how they are shown: a resumed run takes
# them from the command line. Every other option must match the checkpoint's.
RESUME_OVERRIDABLE = ("data_file", "data_dir", "num_workers", "log_freq")




def flat_config(data: dict) -> dict[str, Any]:
    """``{"model.depth": 6, "model.carry.lora.rank": 4, "method.rank": 8, "seed": 42, ...}``
    of a config dict (nested mappings flattened; an empty one kept as a value)."""
    out: dict[str, Any] = {}

    def flat(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                flat(f"{prefix}.{k}", v)
        else:
            out[prefix] = value

    for section, value in data.items():
        if section == "method" and isinstance(value, dict):
            out["method.name"] = value.get("name")
            out.update({f"method.{k}": v for k, v in (value.get("options") or {}).items()})
        else:
            flat(section, value)
    return out


@dataclass
class ResumePoint:
    """A checkpoint to continue from, with the config to continue with."""

    path: Path
    state: dict
    cfg: Config

    @property
    def run_dir(self) -> Path:
        return self.path.parent

    @property
    def epoch(self) -> int:
        return int(self.state["epoch"])

    @property
    def batch(self) -> int:
        return int(self.state.get("batch", 0))

    @property
    def epochs(self) -> int:
        return int(self.state["epochs"])

    @property
    def finished(self) -> bool:
        return bool(self.state.get("finished"))


def prepare_resume(cfg: Config, stage: str, target: Any, explicit: Iterable[str] = ()) -> ResumePoint:
    """Find and read the checkpoint of ``--resume`` and decide the config of the resumed run.

    The run continues with the config saved in its checkpoint. ``explicit`` are the dotted
    keys the command line set (flags and ``-o``; a section name covers its keys): the
    ``RESUME_OVERRIDABLE`` stage keys and ``output`` are taken from ``cfg``; any other
    explicit key whose value differs from the checkpoint's is an error, so that e.g.
    ``--resume --epochs 20`` does not silently train 10. A schedule rule
    (``-o schedule=bit_hyperrule``) matches the plain schedule it chose for the run.
    """
    path = find_checkpoint(target, run_dir(cfg, stage))
    state = load_checkpoint(path, stage)
    try:
        saved = config_from_dict(state["config"], source="checkpoint config")
    except (ConfigError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} holds a config this ppadapt cannot read ({exc})") from None
    mine, theirs = flat_config(cfg.to_dict()), flat_config(saved.to_dict())
    allowed = {f"{stage}.{k}" for k in RESUME_OVERRIDABLE} | {"output"}
    rule = ((state.get("meta") or {}).get("schedule_rule") or {}).get("rule")
    for key in explicit:
        keys = [k for k in sorted(set(mine) | set(theirs)) if k == key or k.startswith(key + ".")]
        for k in keys:
            if k in allowed:
                continue
            if k == f"{stage}.schedule" and rule is not None and mine.get(k) == rule:
                continue  # the rule named again: the checkpoint holds the schedule it chose
            if mine.get(k) != theirs.get(k):
                raise ConfigError(
                    f"--resume continues a run with its saved settings, but {k} is {theirs.get(k)!r} in "
                    f"{path} and {mine.get(k)!r} on the command line (drop that option, or start a new run "
                    "without --resume)")
    st, st_saved = cfg.stage(stage), saved.stage(stage)
    for key in RESUME_OVERRIDABLE:
        if any(k in explicit for k in (f"{stage}.{key}", stage)):
            setattr(st_saved, key, getattr(st, key))
    saved.output = str(path.parent.parent)
    return ResumePoint(path, state, saved)


# --- capturing and restoring ------------------------------------------------------------

def _numpy_state(values: dict) -> dict:
    """Tensors as arrays, also one level down (the optimizer's ``master_weights`` under O2)."""
    return {k: (v.numpy() if isinstance(v, paddle.Tensor) else _numpy_state(v) if isinstance(v, dict) else v)
            for k, v in values.items()}


def rng_state() -> dict:
    """Paddle's generator state (pickled to uint8: paddle.save stores arrays, not bytes),
    numpy's and Python's global states."""
    blob = pickle.dumps(paddle.get_rng_state())
    return {"paddle": np.frombuffer(blob, dtype=np.uint8).copy(), "numpy": np.random.get_state(),
            "python": random.getstate()}


def gather_rng_states(nranks: int) -> list:
    """Every rank's Paddle generator state (rank order), for a checkpoint written mid-epoch."""
    mine = rng_state()["paddle"]
    if nranks < 2:
        return [mine]
    states: list = []
    paddle.distributed.all_gather_object(states, mine)
    return states


def set_paddle_rng(blob: np.ndarray) -> None:
    paddle.set_rng_state(generator_state(blob))  # unpickled allowing Paddle's GeneratorState only


def restore_global_rng(state: dict) -> None:
    """numpy's and Python's global generators as the checkpoint saved them."""
    rng = state.get("rng") or {}
    if rng.get("numpy") is not None:
        np.random.set_state(tuple(rng["numpy"]))
    if rng.get("python") is not None:
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(int(v) for v in internal), gauss))


def metric_states(metrics: list) -> list:
    """Running state of Paddle metrics that keep ``total``/``count`` (Accuracy does)."""
    return [{"total": [float(v) for v in m.total], "count": [int(v) for v in m.count]}
            if hasattr(m, "total") and hasattr(m, "count") else None for m in metrics]


def set_metric_states(metrics: list, states: list | None) -> None:
    for metric, st in zip(metrics, states or []):
        if st:
            metric.total = [float(v) for v in st["total"]]
            metric.count = [int(v) for v in st["count"]]


def remap_optimizer_state(opt_state: dict, saved_names: dict, network: paddle.nn.Layer) -> dict:
    """Rename accumulators keyed by Paddle's tensor names (``linear_3.w_0_velocity_0``) from
    the names the parameters had when saved to the names they have now (a model built in
    another process or order), through the structured names both share."""
    current = {k: p.name for k, p in network.named_parameters()}
    rename = {old: current[k] for k, old in (saved_names or {}).items() if k in current and current[k] != old}
    if not rename:
        return dict(opt_state)
    olds = sorted(rename, key=len, reverse=True)
    out = {}
    for key, value in opt_state.items():
        if key == "master_weights" and isinstance(value, dict):  # O2: keyed by the parameters' own names
            out[key] = {rename.get(k, k): v for k, v in value.items()}
            continue
        for old in olds:
            if key.startswith(old + "_"):
                key = rename[old] + key[len(old):]
                break
        out[key] = value
    return out


def master_weights_as_tensors(opt_state: dict) -> dict:
    """The optimizer state with its O2 float32 master weights as tensors again (Paddle's
    ``set_state_dict`` takes them as they are, and the optimizer computes with them)."""
    masters = opt_state.get("master_weights")
    if not isinstance(masters, dict):
        return opt_state
    return {**opt_state, "master_weights": {k: paddle.to_tensor(v, dtype="float32") for k, v in masters.items()}}


def capture(*, stage: str, cfg: Config, meta: dict, epochs: int, epoch: int, batch: int,
            steps_per_epoch: int, nranks: int, network: paddle.nn.Layer,
            optimizer: paddle.optimizer.Optimizer, lr_callback, saver, metrics: list,
            visualdl_step: int, paddle_rng: list, reason: str, finished: bool = False,
            adaptation: dict | None = None, amp_scaler: dict | None = None) -> dict:
    """The resume checkpoint dict (see the module docstring)."""
    lr_state = dict(lr_callback.state_dict())
    lr_state["last_lr"] = lr_callback.last_lr
    rng = rng_state()
    rng["paddle"] = paddle_rng
    return {"format": FORMAT, "version": VERSION, "stage": stage, "reason": reason,
            "config": cfg.to_dict(), "meta": meta, "epochs": epochs, "epoch": epoch, "batch": batch,
            "global_step": int(lr_callback.global_step), "steps_per_epoch": steps_per_epoch,
            "nranks": nranks, "finished": finished,
            "model": _numpy_state(network.state_dict()),
            "optimizer": _numpy_state(optimizer.state_dict()),
            "optimizer_lr": float(optimizer.get_lr()),
            "param_names": {k: p.name for k, p in network.named_parameters()},
            "lr_schedule": lr_state, "record": saver.state_dict(), "metrics": metric_states(metrics),
            "visualdl_step": int(visualdl_step), "rng": rng, "adaptation": adaptation or {},
            "amp_scaler": _numpy_state(amp_scaler or {})}
