"""Training: validated config, warmup+cosine schedule, exact-resume checkpoints, the trainer."""

from longseq.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from longseq.train.config import TrainConfig, TrainConfigError
from longseq.train.schedule import lr_at, warmup_cosine_scheduler
from longseq.train.trainer import (
    Trainer,
    TrainingDiverged,
    TrainResult,
    batch_indices,
    latest_checkpoint,
    parameter_groups,
)

__all__ = [
    "CheckpointError",
    "TrainConfig",
    "TrainConfigError",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "batch_indices",
    "latest_checkpoint",
    "load_checkpoint",
    "lr_at",
    "parameter_groups",
    "save_checkpoint",
    "warmup_cosine_scheduler",
]
