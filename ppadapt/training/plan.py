"""What differs between a fresh and a resumed run, decided once.

A fresh run takes everything from its config: the run folder, the pretrained backbone
(transfer), the normalisation its weights expect and, with ``resolution: bit``, the model's
input size (:mod:`ppadapt.data.resolution`); with ``schedule: bit_hyperrule``, the schedule
once its training set is loaded (:func:`settle_schedule`, :mod:`ppadapt.training.hyperrule`).
A resumed run takes everything from its checkpoint: the config, the folder, the
normalisation it trained with, the weights and the position in the run. The rest of the
pipeline only reads the plan.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from ..config import Config
from ..data.resolution import resolve_resolution
from ..data.sampler import batches_per_epoch
from ..runs.layout import run_dir
from ..runs.pretrained import pretrained_normalization, resolve_pretrained
from .hyperrule import resolve_schedule_rule
from .resume import ResumePoint, prepare_resume


@dataclass
class StagePlan:
    cfg: Config
    stage: str
    run_dir: Path
    pretrained: Path | None = None  # a fresh transfer's backbone checkpoint
    normalization: tuple | None = None  # (mean, std, where from); None: the dataset's own
    point: ResumePoint | None = None  # the checkpoint a resumed run continues
    schedule_rule: dict | None = None  # what a schedule rule chose (run.json's schedule_rule)

    @property
    def resumed(self) -> bool:
        return self.point is not None

    @property
    def finished(self) -> bool:
        return self.point is not None and self.point.finished

    @property
    def start_epoch(self) -> int:
        return self.point.epoch if self.point else 0

    @property
    def skip(self) -> int:
        """Batches of ``start_epoch`` already trained (a run stopped part-way through it)."""
        return self.point.batch if self.point else 0

    @property
    def saved(self) -> dict[str, Any]:
        """The resume checkpoint's contents ({} for a fresh run)."""
        return self.point.state if self.point else {}


def plan_stage(cfg: Config, stage: str, resume: Any = None,
               log: Callable[[str], None] = print) -> StagePlan:
    """The plan of a fresh run (``resume`` None/False) or of continuing one: ``True`` (this
    config and stage's run folder), a run folder or checkpoint path, or a ResumePoint."""
    if resume is None or resume is False:
        cfg = resolve_resolution(cfg, stage, log)  # resolution: bit sets model.img_size (a resumed run has it)
        if stage != "transfer":
            return StagePlan(cfg, stage, run_dir(cfg, stage))
        # Resolved first: a missing checkpoint fails before any time is spent on the data.
        pretrained = resolve_pretrained(cfg, log)
        # Images are normalised the way the pretrained weights expect (PaddleClas ViT: 0.5/0.5; DeiT, MAE: ImageNet).
        norm = pretrained_normalization(cfg.transfer.pretrained, pretrained, cfg.model.backbone)
        return StagePlan(cfg, stage, run_dir(cfg, stage), pretrained, norm)
    point = resume if isinstance(resume, ResumePoint) else prepare_resume(cfg, stage, resume)
    if point.finished:
        return StagePlan(point.cfg, stage, point.run_dir, point=point)
    meta = point.state.get("meta") or {}  # images are normalised as the run did
    return StagePlan(point.cfg, stage, point.run_dir, normalization=(meta["mean"], meta["std"], "as saved"),
                     point=point)


def settle_schedule(plan: StagePlan, train_images: int, nranks: int,
                    log: Callable[[str], None] = print) -> StagePlan:
    """The plan with its schedule decided: a fresh run whose schedule is a rule
    (``schedule: bit_hyperrule``) gets the rule's plain schedule for its ``train_images``
    training images (all processes' together) and ``nranks`` processes; any other plan, a
    resumed one included (its checkpoint holds the schedule), is returned as it is."""
    if plan.resumed:
        return plan
    st = plan.cfg.stage(plan.stage)
    cfg, record = resolve_schedule_rule(plan.cfg, plan.stage, train_images,
                                        batches_per_epoch(train_images, st.batch_size, nranks), log)
    return plan if record is None else replace(plan, cfg=cfg, schedule_rule=record)
