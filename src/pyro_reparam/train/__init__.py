"""Training: the SVI loop, its batches, data parallel under torchrun, and checkpoints that
resume exactly and are never written bad."""

from pyro_reparam.train.checkpoint import CheckpointError
from pyro_reparam.train.faults import TrainingError
from pyro_reparam.train.history import History
from pyro_reparam.train.loop import CHECKPOINT_NAME, fit
from pyro_reparam.train.options import resolve_device

__all__ = [
    "CHECKPOINT_NAME",
    "CheckpointError",
    "History",
    "TrainingError",
    "fit",
    "resolve_device",
]
