"""Hamiltonian Monte Carlo over a batch of chains at once, for small networks' exact posteriors.

Each of ``C`` chains holds a flat parameter vector; one call of ``log_density`` on ``(C, P)``
gives ``(C,)`` log densities, so every leapfrog step is one batched forward and backward pass
for all chains (what makes HMC on a 100-1000 parameter network take seconds, where per-sample
tracing would take minutes).

Per iteration: momentum ``p ~ N(0, M)`` with a diagonal mass matrix ``M``, ``num_steps``
leapfrog steps of size ``eps``, accept with probability ``min(1, exp(H_0 - H_1))``,
``H = -log_density(theta) + p' M^-1 p / 2``. Warm-up adapts ``eps`` per chain by dual averaging
towards ``target_accept`` (Hoffman & Gelman 2014) and ``M^-1`` to the within-chain variances of
the warm-up draws (averaged over chains, shrunk towards 1e-3 as in Stan), in the windows
15% / 35% / 35% / 15% (step size only, two mass-matrix windows, step size only).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

DIVERGENCE = 1000.0
"""Energy error above which a transition counts as divergent (Stan's and Pyro's threshold)."""


@dataclass
class HMCResult:
    """``samples``: ``(C, S, P)`` draws after warm-up; ``accept_rate``: ``(C,)`` mean acceptance
    probability after warm-up; ``step_size``: ``(C,)``; ``inverse_mass``: ``(P,)``;
    ``divergences``: ``(C,)`` post-warm-up transitions whose energy error ``H_1 - H_0`` exceeded
    :data:`DIVERGENCE` (or was not finite), Stan's definition of a divergent transition."""

    samples: torch.Tensor
    accept_rate: torch.Tensor
    step_size: torch.Tensor
    inverse_mass: torch.Tensor
    divergences: torch.Tensor


def _value_and_grad(log_density, theta):
    with torch.enable_grad():
        theta = theta.detach().requires_grad_()
        value = log_density(theta)
        (grad,) = torch.autograd.grad(value.sum(), theta)
    return value.detach(), grad


class _DualAveraging:
    """Per-chain step size ``log eps_t`` by dual averaging of ``target - accept``."""

    def __init__(self, step_size: torch.Tensor, target: float):
        self.mu = (10 * step_size).log()
        self.target, self.t = target, 0
        self.h_bar = torch.zeros_like(step_size)
        self.log_avg = torch.zeros_like(step_size)
        self.log_eps = step_size.log()

    def update(self, accept: torch.Tensor) -> torch.Tensor:
        self.t += 1
        w = 1 / (self.t + 10)
        self.h_bar = (1 - w) * self.h_bar + w * (self.target - accept)
        self.log_eps = self.mu - math.sqrt(self.t) / 0.05 * self.h_bar
        eta = self.t**-0.75
        self.log_avg = eta * self.log_eps + (1 - eta) * self.log_avg
        return self.log_eps.exp()

    def final(self) -> torch.Tensor:
        return self.log_avg.exp()


def _leapfrog(log_density, theta, momentum, grad, eps, inverse_mass, num_steps):
    momentum = momentum + 0.5 * eps * grad
    for step in range(num_steps):
        theta = theta + eps * inverse_mass * momentum
        value, grad = _value_and_grad(log_density, theta)
        if step < num_steps - 1:
            momentum = momentum + eps * grad
    return theta, momentum + 0.5 * eps * grad, value, grad


def hmc(
    log_density: Callable[[torch.Tensor], torch.Tensor],
    init: torch.Tensor,
    *,
    num_samples: int,
    warmup: int,
    num_steps: int = 32,
    target_accept: float = 0.8,
    progress: bool = False,
) -> HMCResult:
    """Run ``init.shape[0]`` chains from ``init`` ``(C, P)``; see the module docstring.

    Seeding is the caller's (``torch.manual_seed``): momenta and accept draws come from the
    global generator on ``init``'s device."""
    if num_samples < 1 or warmup < 0 or num_steps < 1:
        raise ValueError(
            f"hmc: need num_samples >= 1, warmup >= 0, num_steps >= 1; got {num_samples}, "
            f"{warmup}, {num_steps}"
        )
    from tqdm.auto import tqdm

    theta = init.detach().clone()
    chains, dim = theta.shape
    value, grad = _value_and_grad(log_density, theta)
    if not torch.isfinite(value).all():
        raise ValueError("hmc: the log density is not finite at the initial values")
    inverse_mass = torch.ones(dim, dtype=theta.dtype, device=theta.device)
    eps = torch.full((chains,), 0.1 / math.sqrt(dim), dtype=theta.dtype, device=theta.device)
    adapt = _DualAveraging(eps, target_accept)
    windows = {int(0.15 * warmup): "start", int(0.5 * warmup): "mass", int(0.85 * warmup): "mass"}
    window_draws, kept, accepts = [], [], []
    divergences = torch.zeros(chains, dtype=torch.long, device=theta.device)
    bar = tqdm(range(warmup + num_samples), disable=not progress, desc="hmc", leave=False)
    for it in bar:
        momentum = torch.randn_like(theta) / inverse_mass.sqrt()
        h0 = -value + 0.5 * (momentum.pow(2) * inverse_mass).sum(-1)
        step = eps[:, None] * (1 + 0.2 * (2 * torch.rand_like(eps[:, None]) - 1))
        prop, p1, v1, g1 = _leapfrog(log_density, theta, momentum, grad, step, inverse_mass,
                                     num_steps)  # fmt: skip
        h1 = -v1 + 0.5 * (p1.pow(2) * inverse_mass).sum(-1)
        accept_prob = torch.exp((h0 - h1).clamp(max=0)).nan_to_num(0.0)
        accept = torch.rand_like(accept_prob) < accept_prob
        theta = torch.where(accept[:, None], prop, theta)
        value = torch.where(accept, v1, value)
        grad = torch.where(accept[:, None], g1, grad)
        if it < warmup:
            eps = adapt.update(accept_prob)
            window_draws.append(theta)
            if windows.get(it + 1) == "start":
                window_draws = []
            elif windows.get(it + 1) == "mass":
                inverse_mass = _within_chain_variance(torch.stack(window_draws, 1))
                window_draws = []
                adapt = _DualAveraging(eps, target_accept)
            if it + 1 == warmup:
                eps = adapt.final()
        else:
            kept.append(theta)
            accepts.append(accept_prob)
            divergences += ~(h1 - h0 <= DIVERGENCE)
            bar.set_postfix(accept=f"{accept_prob.mean().item():.2f}")
    return HMCResult(
        torch.stack(kept, 1), torch.stack(accepts, 1).mean(1), eps, inverse_mass, divergences
    )


def _within_chain_variance(draws: torch.Tensor) -> torch.Tensor:
    """``(C, T, P)`` -> ``(P,)``: within-chain variance averaged over chains, shrunk as Stan
    does, ``n / (n + 5) var + 1e-3 * 5 / (n + 5)``."""
    n = draws.shape[1]
    var = draws.var(1).mean(0) if n > 1 else torch.ones_like(draws[0, 0])
    return n / (n + 5) * var + 1e-3 * 5 / (n + 5)
