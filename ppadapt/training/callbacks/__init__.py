"""``paddle.Model.fit`` callbacks, one concern each: LR warmup schedules, the eval-loss mean,
VisualDL logging, best/final checkpoints and run.json, the progress bar, the per-epoch
data/RNG setup, the guard (NaN, Ctrl-C, the resumable checkpoint), the validation split's
evaluation that chooses the best epoch, and the adaptation monitor (how far each group of
weights moved)."""
from .adaptation import AdaptationMonitor
from .best_final import BestAndFinalCheckpoint
from .epoch_setup import EpochSetup
from .guard import TrainingGuard
from .loss import EvalLossMean
from .lr_warmup import WarmupEpochCosine, WarmupStepCosine, warmup_epoch_cosine_lr, warmup_step_cosine_lr
from .progress import EpochProgBar
from .validation import ValidationEval
from .visualdl_logger import VisualDLLogger

__all__ = ["AdaptationMonitor", "BestAndFinalCheckpoint", "EpochProgBar", "EpochSetup", "EvalLossMean", "TrainingGuard",
           "ValidationEval", "VisualDLLogger", "WarmupEpochCosine", "WarmupStepCosine", "warmup_epoch_cosine_lr",
           "warmup_step_cosine_lr"]
