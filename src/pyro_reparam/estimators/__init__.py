"""Gradient estimators as objects: the score-function ELBO and its baselines, the linear-layer
handlers (local reparameterization, Flipout), and the multi-sample and low-variance ELBOs
(VIMCO, DReG, sticking the landing, DisARM and its midpoint Taylor control variate, ARMS)."""

from pyro_reparam.estimators.arms import ARMS_ELBO
from pyro_reparam.estimators.baselines import (
    Baseline,
    BaselineValue,
    DecayingAverage,
    LeaveOneOut,
    NeuralBaseline,
    NoBaseline,
)
from pyro_reparam.estimators.disarm import DisARM_ELBO
from pyro_reparam.estimators.dreg import DReG_ELBO
from pyro_reparam.estimators.flipout import Flipout
from pyro_reparam.estimators.local_reparam import LocalReparameterization
from pyro_reparam.estimators.score_elbo import BASELINES, ScoreFunctionELBO
from pyro_reparam.estimators.stl import STL_ELBO
from pyro_reparam.estimators.taylor_disarm import TaylorDisARM_ELBO
from pyro_reparam.estimators.vimco import VIMCO_ELBO

__all__ = [
    "ARMS_ELBO",
    "BASELINES",
    "STL_ELBO",
    "VIMCO_ELBO",
    "Baseline",
    "BaselineValue",
    "DReG_ELBO",
    "DecayingAverage",
    "DisARM_ELBO",
    "Flipout",
    "LeaveOneOut",
    "LocalReparameterization",
    "NeuralBaseline",
    "NoBaseline",
    "ScoreFunctionELBO",
    "TaylorDisARM_ELBO",
]
