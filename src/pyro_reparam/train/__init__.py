"""Training: the SVI loop, its batches, distributed data parallel and checkpoints."""

from pyro_reparam.train.checkpoint import CheckpointError
from pyro_reparam.train.loop import CHECKPOINT_NAME, History, TrainingError, fit, resolve_device

__all__ = [
    "CHECKPOINT_NAME",
    "CheckpointError",
    "History",
    "TrainingError",
    "fit",
    "resolve_device",
]
