"""Gradient estimators Pyro lacks: score-function ELBOs with per-datum-safe baselines."""

from pyro_reparam.estimators.score_elbo import BASELINES, ScoreFunctionELBO

__all__ = ["BASELINES", "ScoreFunctionELBO"]
