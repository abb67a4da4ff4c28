"""``paddle.Model.fit`` callbacks: LR warmup schedules, VisualDL logging, best/final checkpoints,
and resumable training (epoch setup, NaN guard, Ctrl-C, the per-epoch resumable checkpoint)."""
from .best_final import BestAndFinalCheckpoint
from .lr_warmup import WarmupEpochCosine, WarmupStepCosine, warmup_epoch_cosine_lr, warmup_step_cosine_lr
from .guard import EpochProgBar, EpochSetup, TrainingGuard
from .visualdl_logger import VisualDLLogger

__all__ = ["BestAndFinalCheckpoint", "EpochProgBar", "EpochSetup", "TrainingGuard", "VisualDLLogger",
           "WarmupEpochCosine", "WarmupStepCosine", "warmup_epoch_cosine_lr", "warmup_step_cosine_lr"]
