"""Pixel likelihoods p(x | z) for the image models, and the importance-sampled log-likelihood."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch

LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "gaussian")


def check_likelihood(likelihood: str) -> str:
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    return likelihood


def pixel_distribution(likelihood: str, out: torch.Tensor, log_sigma: torch.Tensor | None = None):
    """``p(x | z)`` over the last dim of the decoder output ``out`` (logits, or means for
    ``"gaussian"`` with a learned per-pixel ``log_sigma``), as one event."""
    if likelihood == "bernoulli":
        return dist.Bernoulli(logits=out).to_event(1)
    if likelihood == "continuous_bernoulli":
        return dist.ContinuousBernoulli(logits=out).to_event(1)
    return dist.Normal(torch.sigmoid(out), log_sigma.exp()).to_event(1)


def pixel_mean(likelihood: str, out: torch.Tensor) -> torch.Tensor:
    """E[x | z]: the image a decoder output stands for (Continuous Bernoulli's mean differs
    from ``sigmoid(logits)``)."""
    if likelihood == "continuous_bernoulli":
        return dist.ContinuousBernoulli(logits=out).mean
    return torch.sigmoid(out)


def importance_log_likelihood(log_weights: torch.Tensor) -> torch.Tensor:
    """``log (1/K) sum_k w_k`` over dim 0: with ``w_k = p(x, z_k) / q(z_k | x)``, ``z_k ~ q``,
    an estimate of ``log p(x)`` that is a lower bound in expectation and tightens as K grows
    (Burda et al. 2016)."""
    return torch.logsumexp(log_weights, 0) - math.log(log_weights.shape[0])
