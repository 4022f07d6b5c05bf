"""Gradient estimators Pyro lacks: score-function ELBOs with per-datum-safe baselines."""

from pyro_reparam.estimators.baselines import (
    Baseline,
    BaselineValue,
    DecayingAverage,
    LeaveOneOut,
    NeuralBaseline,
    NoBaseline,
)
from pyro_reparam.estimators.score_elbo import BASELINES, ScoreFunctionELBO

__all__ = [
    "BASELINES",
    "Baseline",
    "BaselineValue",
    "DecayingAverage",
    "LeaveOneOut",
    "NeuralBaseline",
    "NoBaseline",
    "ScoreFunctionELBO",
]

from pyro_reparam.estimators.flipout import Flipout
from pyro_reparam.estimators.local_reparam import LocalReparameterization

__all__ += ["Flipout", "LocalReparameterization"]
from pyro_reparam.estimators.vimco import VIMCO_ELBO  # noqa: E402, I001

__all__ += ["VIMCO_ELBO"]
from pyro_reparam.estimators.dreg import DReG_ELBO  # noqa: E402, I001

__all__ += ["DReG_ELBO"]
from pyro_reparam.estimators.stl import STL_ELBO  # noqa: E402, I001

__all__ += ["STL_ELBO"]
from pyro_reparam.estimators.disarm import DisARM_ELBO  # noqa: E402, I001

__all__ += ["DisARM_ELBO"]
