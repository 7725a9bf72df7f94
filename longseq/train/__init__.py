"""Training: validated config, warmup+cosine schedule, exact-resume checkpoints, the trainer and what it reports."""

from longseq.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from longseq.train.config import TrainConfig, TrainConfigError
from longseq.train.events import RunStart, TrainObserver, TrainResult
from longseq.train.schedule import lr_at, warmup_cosine_scheduler
from longseq.train.trainer import (
    Trainer,
    TrainingDiverged,
    batch_indices,
    latest_checkpoint,
    parameter_groups,
)

__all__ = [
    "CheckpointError",
    "RunStart",
    "TrainConfig",
    "TrainConfigError",
    "TrainObserver",
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
