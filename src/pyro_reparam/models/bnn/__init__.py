"""Bayesian multilayer perceptrons."""

from pyro_reparam.models.bnn.elbo import BayesianMLPELBO, HandledTraceMeanField_ELBO
from pyro_reparam.models.bnn.metrics import expected_calibration_error, interval_coverage
from pyro_reparam.models.bnn.network import BayesianMLP

__all__ = [
    "BayesianMLP",
    "BayesianMLPELBO",
    "HandledTraceMeanField_ELBO",
    "expected_calibration_error",
    "interval_coverage",
]
