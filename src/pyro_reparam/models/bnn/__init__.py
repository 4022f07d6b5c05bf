"""Bayesian multilayer perceptrons."""

from pyro_reparam.models.bnn.network import (
    BayesianMLP,
    BayesianMLPELBO,
    expected_calibration_error,
    interval_coverage,
)

__all__ = ["BayesianMLP", "BayesianMLPELBO", "expected_calibration_error", "interval_coverage"]
