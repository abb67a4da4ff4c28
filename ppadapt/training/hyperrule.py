"""BiT's HyperRule for the schedule (Kolesnikov et al. 2020, "Big Transfer"; the published
code's ``bit_hyperrule.py``): ``schedule: bit_hyperrule`` takes the run's length, warm-up,
LR decay steps and MixUp from the size N of the training set, so that no sweep is needed.

================  =======  =====================  ======  ==========
N (images)        warm-up  LR x0.1 at step        end     MixUp
================  =======  =====================  ======  ==========
< 20,000          100      200, 300, 400          500     off
< 500,000         500      3,000, 6,000, 9,000    10,000  alpha 0.1
500,000 and more  500      6,000, 12,000, 18,000  20,000  alpha 0.1
================  =======  =====================  ======  ==========

N is the number of images the run trains on: after class selection and ``val_split``
(every process loads the whole training set and takes its share of each epoch, so this is
the global count). The LR is multiplied by ``decay_factor`` (BiT's 0.1) at each decay step.

Steps are optimizer steps at any batch size, as in BiT's code, which keeps the step count
and scales the LR with the batch (0.003 at 512); ``lr_scale: linear256`` scales ``lr`` the
same way, so a smaller batch trains BiT's steps on fewer images at a proportionally lower LR.

The trainer counts epochs, so the run trains ``ceil(end / B)`` epochs of the B batches one
process has per epoch; the warm-up is given in steps, and the decay steps as the fractions
``decay_at = step / (epochs * B)`` of the run, which the step decay
(:func:`~ppadapt.training.callbacks.lr_warmup.decay_steps`) rounds back to exactly those
steps. The steps past BiT's end (fewer than one epoch) train at the last LR.

The rule is applied once, when a fresh run has loaded its training set
(:func:`resolve_schedule_rule`): the config becomes a plain ``step_decay`` one (``epochs``,
``warmup_steps``, ``decay_at``, ``mixup_alpha``), so run.json, the resume checkpoint and
``--resume`` see concrete values; run.json's ``schedule_rule`` records what was chosen and
from which N. A config that names the rule must not set those keys as well
(:func:`ppadapt.config.loading.check_rule_keys`).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

from ..config import Config, validate
from ..errors import ConfigError

RULE = "bit_hyperrule"
SMALL, LARGE = 20_000, 500_000  # BiT's dataset-size thresholds (training images)


@dataclass(frozen=True)
class BitSchedule:
    """BiT's schedule in optimizer steps, and its MixUp alpha (0: off)."""

    warmup: int
    decays: tuple[int, ...]
    end: int
    mixup_alpha: float


def bit_schedule(train_images: int) -> BitSchedule:
    """BiT's schedule and MixUp for a training set of ``train_images`` images."""
    if train_images < 1:
        raise ValueError(f"train_images must be positive, got {train_images}")
    if train_images < SMALL:
        return BitSchedule(100, (200, 300, 400), 500, 0.0)
    if train_images < LARGE:
        return BitSchedule(500, (3_000, 6_000, 9_000), 10_000, 0.1)
    return BitSchedule(500, (6_000, 12_000, 18_000), 20_000, 0.1)


@dataclass(frozen=True)
class RuleChoice:
    """What the rule chose for a training set of ``train_images`` images trained in epochs of
    ``batches_per_epoch`` batches (one process's count; every process has as many)."""

    train_images: int
    batches_per_epoch: int
    schedule: BitSchedule

    @property
    def epochs(self) -> int:
        return math.ceil(self.schedule.end / self.batches_per_epoch)

    @property
    def steps(self) -> int:
        """The steps the run trains: whole epochs, at least BiT's."""
        return self.epochs * self.batches_per_epoch

    @property
    def decay_at(self) -> list[float]:
        """The decay steps as fractions of the run (what ``step_decay`` takes)."""
        return [step / self.steps for step in self.schedule.decays]

    def record(self) -> dict:
        """run.json's ``schedule_rule``: the rule, its input and its choice, in steps."""
        s = self.schedule
        return {"rule": RULE, "train_images": self.train_images, "batches_per_epoch": self.batches_per_epoch,
                "epochs": self.epochs, "steps": self.steps, "bit_steps": s.end, "warmup_steps": s.warmup,
                "decay_steps": list(s.decays), "mixup_alpha": s.mixup_alpha}

    def describe(self, stage: str, decay_factor: float) -> str:
        """The log line: what the rule chose, and why."""
        s, n = self.schedule, self.train_images
        size = "< 20k" if n < SMALL else "20k to 500k" if n < LARGE else ">= 500k"
        epochs = f"{_count(self.epochs, 'epoch')} of {_count(self.batches_per_epoch, 'batch', 'es')}"
        length = f"{s.end:,} steps = {epochs}"
        if self.steps > s.end:
            length = (f"{s.end:,} steps -> {epochs} ({self.steps:,} steps, the last {self.steps - s.end:,} at the "
                      "final LR)")
        mixup = f"MixUp alpha {s.mixup_alpha:g}" if s.mixup_alpha else "MixUp off"
        return (f"{stage}.schedule {RULE}: {n:,} training images ({size}): {length}, warm-up {s.warmup:,}, "
                f"LR x{decay_factor:g} at steps {', '.join(f'{d:,}' for d in s.decays)}; {mixup}")


def _count(n: int, word: str, plural: str = "s") -> str:
    return f"{n:,} {word}{'' if n == 1 else plural}"


def resolve_schedule_rule(cfg: Config, stage: str, train_images: int, batches_per_epoch: int,
                          log: Callable[[str], None] = print) -> tuple[Config, dict | None]:
    """``(cfg, None)`` unless the stage's schedule is ``bit_hyperrule``; then a copy of ``cfg``
    with the rule's plain ``step_decay`` schedule and MixUp for this training set, and run.json's
    record of the choice. Logs one line. ConfigError if the result is not a valid config (MixUp
    turned on for batches of one image)."""
    st = cfg.stage(stage)
    if st.schedule != RULE:
        return cfg, None
    if train_images < 1 or batches_per_epoch < 1:
        raise ConfigError(f"{stage}.schedule {RULE} needs training images to decide the schedule from, got "
                          f"{train_images}")
    choice = RuleChoice(train_images, batches_per_epoch, bit_schedule(train_images))
    out = copy.deepcopy(cfg)
    rst = out.stage(stage)
    rst.schedule, rst.epochs, rst.decay_at = "step_decay", choice.epochs, choice.decay_at
    rst.warmup_steps, rst.warmup_epochs = choice.schedule.warmup, None
    rst.mixup_alpha = choice.schedule.mixup_alpha
    if rst.mixup_alpha and rst.batch_size < 2:
        raise ConfigError(f"{stage}.schedule {RULE} turns MixUp on for {train_images:,} training images (20k or "
                          f"more), and MixUp needs at least 2 images per batch: raise {stage}.batch_size "
                          f"({rst.batch_size} now)")
    try:
        validate(out)
    except ConfigError as exc:
        raise ConfigError(f"{stage}.schedule {RULE} (for {train_images:,} training images): {exc}") from None
    log(choice.describe(stage, rst.decay_factor))
    return out, choice.record()
