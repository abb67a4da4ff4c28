"""``paddle.Model.fit`` callbacks: LR warmup schedules, VisualDL logging, best/final checkpoints."""
from .checkpoint import BestAndFinalCheckpoint
from .lr_warmup import WarmupEpochCosine, WarmupStepCosine, warmup_epoch_cosine_lr, warmup_step_cosine_lr
from .visualdl_logger import VisualDLLogger

__all__ = ["BestAndFinalCheckpoint", "VisualDLLogger", "WarmupEpochCosine", "WarmupStepCosine",
           "warmup_epoch_cosine_lr", "warmup_step_cosine_lr"]
