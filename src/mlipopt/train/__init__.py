"""Training: config schema, eq. 11 loss and metrics, atomic checkpoints, the trainer."""

from .checkpoint import CheckpointError
from .config import ConfigError, RunConfig, dump_config, load_config
from .loss import ErrorMetrics, eq11_loss, validation_metric
from .session import Session
from .trainer import Trainer, TrainingDiverged, train

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ErrorMetrics",
    "RunConfig",
    "Session",
    "Trainer",
    "TrainingDiverged",
    "dump_config",
    "eq11_loss",
    "load_config",
    "train",
    "validation_metric",
]
