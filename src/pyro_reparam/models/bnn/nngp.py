"""Empirical-Bayes prior scales for ReLU ``BayesianMLP``s from their infinite-width limit.

A ReLU MLP with weights ``W_l ~ N(0, s_w^2 / fan_in)``, hidden biases ``N(0, s_b^2)``, output
weights ``N(0, s_v^2 / fan_in)`` and output bias ``N(0, s_c^2)`` is, as the hidden layers widen,
a Gaussian process (Neal 1996; Lee et al. 2018) with the kernel recursion

    K_0(x, x') = s_b^2 + s_w^2 x.x' / d
    K_l(x, x') = s_b^2 + s_w^2 E[relu(u) relu(u')],  (u, u') ~ N(0, K_{l-1} on {x, x'})
    K_out      = s_c^2 + s_v^2 E[relu(u) relu(u')],  (u, u') ~ N(0, K_L on {x, x'})

with the expectation in closed form (Cho & Saul 2009's arc-cosine kernel of order 1):
``E[relu(u) relu(u')] = sqrt(k k') / (2 pi) (sin t + (pi - t) cos t)``, ``cos t = c / sqrt(k k')``.
Its log marginal likelihood ``log N(y; 0, K_out + sigma^2 I)`` is exact, so the five scales
``(s_w, s_b, s_v, s_c, sigma)`` can be chosen by type-II maximum likelihood before any
inference on the network (:func:`fit_prior_scales`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LOG_BOUND = 3.0
_NAMES = ("weight", "bias", "output_weight", "output_bias", "noise")


@dataclass(frozen=True)
class PriorScales:
    """Prior standard deviations (fan-in scaled weights: ``s / sqrt(fan_in)``) and the noise
    of the Gaussian likelihood, in the standardized units the network sees."""

    weight: float
    bias: float
    output_weight: float
    output_bias: float
    noise: float
    log_marginal_likelihood: float


def _relu_expectation(k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor) -> torch.Tensor:
    """``E[relu(u) relu(u')]`` for ``(u, u')`` centred Gaussian with variances ``k11``, ``k22``
    and covariance ``k12`` (broadcast)."""
    norm = (k11 * k22).sqrt()
    theta = torch.acos((k12 / norm).clamp(-1 + 1e-12, 1 - 1e-12))
    return norm / (2 * math.pi) * (theta.sin() + (math.pi - theta) * theta.cos())


def relu_nngp_kernel(
    a: torch.Tensor, b: torch.Tensor, depth: int, scales: torch.Tensor
) -> torch.Tensor:
    """``K_out(a_i, b_j)`` of a ReLU MLP with ``depth`` hidden layers in the infinite-width
    limit; ``a``: ``(N, d)``, ``b``: ``(M, d)``, ``scales``: ``(s_w, s_b, s_v, s_c)``.
    Returns ``(N, M)``."""
    sw2, sb2, sv2, sc2 = scales[:4].pow(2)
    d = a.shape[-1]
    k12 = sb2 + sw2 * (a @ b.T) / d
    k11 = sb2 + sw2 * a.pow(2).sum(-1) / d
    k22 = sb2 + sw2 * b.pow(2).sum(-1) / d
    for _ in range(depth - 1):
        k12 = sb2 + sw2 * _relu_expectation(k12, k11[:, None], k22[None, :])
        k11 = sb2 + sw2 * k11 / 2  # E[relu(u)^2] = k / 2
        k22 = sb2 + sw2 * k22 / 2
    return sc2 + sv2 * _relu_expectation(k12, k11[:, None], k22[None, :])


def log_marginal_likelihood(
    x: torch.Tensor, y: torch.Tensor, depth: int, scales: torch.Tensor
) -> torch.Tensor:
    """``log N(y; 0, K_out(x, x) + sigma^2 I)``; ``y``: ``(N,)`` or ``(N, k)`` (independent
    outputs sharing the kernel); ``scales``: ``(s_w, s_b, s_v, s_c, sigma)``."""
    y = y[:, None] if y.dim() == 1 else y
    n, k = y.shape
    cov = relu_nngp_kernel(x, x, depth, scales) + scales[4].pow(2) * torch.eye(
        n, dtype=x.dtype, device=x.device
    )
    chol = torch.linalg.cholesky(cov)
    alpha = torch.cholesky_solve(y, chol)
    return (
        -0.5 * (y * alpha).sum()
        - k * chol.diagonal().log().sum()
        - 0.5 * n * k * math.log(2 * math.pi)
    )


def _bounded(free: torch.Tensor) -> torch.Tensor:
    """Scales in ``[e^-LOG_BOUND, e^LOG_BOUND]`` (keeps the kernel matrix well conditioned)."""
    return (LOG_BOUND * torch.tanh(free / LOG_BOUND)).exp()


def fit_prior_scales(
    x: torch.Tensor,
    y: torch.Tensor,
    depth: int,
    *,
    max_points: int = 1000,
    seed: int = 0,
) -> PriorScales:
    """Type-II maximum likelihood of the five scales on standardized ``x`` ``(N, d)`` and ``y``.

    Maximizes :func:`log_marginal_likelihood` over the log scales, each within
    ``[-LOG_BOUND, LOG_BOUND]``, with L-BFGS from all-ones, in float64; on a random subset of
    ``max_points`` points when ``N`` is larger (the Cholesky is ``O(N^3)``). For one hidden
    layer only ``s_w s_v`` and ``s_b / s_w`` are identified (ReLU is positively homogeneous),
    so the optimum is one point of a ridge of equal likelihood, all of the same function prior."""
    if depth < 1:
        raise ValueError(f"fit_prior_scales: depth must be >= 1 hidden layer, got {depth}")
    if x.shape[0] > max_points:
        g = torch.Generator().manual_seed(seed)
        keep = torch.randperm(x.shape[0], generator=g)[:max_points].to(x.device)
        x, y = x[keep], y[keep]
    x, y = x.double(), y.double()
    free = torch.zeros(5, dtype=torch.float64, device=x.device, requires_grad=True)
    optim = torch.optim.LBFGS([free], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optim.zero_grad()
        loss = -log_marginal_likelihood(x, y, depth, _bounded(free))
        loss.backward()
        return loss

    optim.step(closure)
    with torch.no_grad():
        scales = _bounded(free)
        log_ml = float(log_marginal_likelihood(x, y, depth, scales))
    if not math.isfinite(log_ml):
        raise RuntimeError(
            "fit_prior_scales: the marginal likelihood is not finite after optimization; "
            "use prior='fan_in' or a fixed scale"
        )
    return PriorScales(**dict(zip(_NAMES, scales.tolist(), strict=True)),
                       log_marginal_likelihood=log_ml)  # fmt: skip
