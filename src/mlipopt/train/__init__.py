"""Training: config schema, eq. 11 loss and metrics, atomic checkpoints, the trainer."""

from .._lazy import lazy_exports

_EXPORTS = {
    "CheckpointError": ".checkpoint",
    "ConfigError": ".config",
    "RunConfig": ".config",
    "dump_config": ".config",
    "load_config": ".config",
    "ErrorMetrics": ".loss",
    "eq11_loss": ".loss",
    "validation_metric": ".loss",
    "Session": ".session",
    "Trainer": ".trainer",
    "TrainingDiverged": ".trainer",
    "train": ".trainer",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
