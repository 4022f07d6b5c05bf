"""PSIS k-hat of a variational approximation (Yao et al. 2018, "Yes, but did it work?").

The importance ratios ``w_s = p(x, z_s) / q(z_s)``, ``z_s ~ q``, have a generalized-Pareto tail
whose shape ``k`` says how far ``q`` is from the posterior: below 0.5 the guide is good for
importance sampling, 0.5-0.7 usable, above 0.7 unreliable. ArviZ is imported inside the
functions, so ``import pyro_reparam`` stays light.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pyro.poutine as poutine
import torch

MIN_PARTICLES = 50
KHAT_READING = ((0.5, "good"), (0.7, "usable"), (math.inf, "unreliable"))


def replayed_traces(model, guide, args, kwargs):
    """A guide trace and the model trace replayed on it."""
    guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
    model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args, **kwargs)
    return guide_tr, model_tr


def vi_log_weights(
    model: Callable, guide: Callable, *args, num_particles: int = 1000, plate: str | None = None,
    **kwargs,
) -> torch.Tensor:  # fmt: skip
    """``log p(x, z_s) - log q(z_s)`` for ``z_s ~ q``, shape ``(S,)``; with ``plate`` (an
    amortized guide, local latents), one weight per datum, shape ``(S, N)``: the terms inside
    that plate stay per datum and terms outside it are left out."""
    rows = []
    with torch.no_grad():
        for _ in range(num_particles):
            guide_tr, model_tr = replayed_traces(model, guide, args, kwargs)
            rows.append(log_weight(model_tr, plate) - log_weight(guide_tr, plate))
    return torch.stack(rows)


def log_weight(trace, plate):
    """``sum log p`` over a trace's sample sites (per datum of ``plate`` when given)."""
    trace.compute_log_prob()
    total = 0.0
    for site in trace.nodes.values():
        if site["type"] != "sample":
            continue
        lp = site["log_prob"]
        if plate is None:
            total = total + lp.sum()
            continue
        frames = [f for f in site["cond_indep_stack"] if f.name == plate]
        if not frames:
            continue
        dim = frames[0].dim
        lp = lp.reshape((1,) * max(0, -dim - lp.dim()) + lp.shape)
        total = total + lp.movedim(dim, -1).reshape(-1, lp.shape[dim]).sum(0)
    return torch.as_tensor(total)


def pareto_khat(log_weights: torch.Tensor | np.ndarray) -> float | np.ndarray:
    """PSIS k-hat of importance ratios ``exp(log_weights)`` along axis 0 (ArviZ's PSIS, which
    smooths ``exp(-input)``: the log-weights are negated). Weights equal up to rounding (q = p up
    to a constant) give ``-inf``."""
    from arviz_stats.base import array_stats

    lw = torch.as_tensor(log_weights, dtype=torch.float64).numpy()
    if lw.shape[0] < MIN_PARTICLES:
        raise ValueError(
            f"pareto_khat: {lw.shape[0]} draws leave too short a tail to fit; use at least "
            f"{MIN_PARTICLES} (a few hundred for a stable estimate)"
        )
    lw = np.moveaxis(lw, 0, -1)
    spread = lw.max(-1) - lw.min(-1)
    khat = np.full(lw.shape[:-1], -np.inf)
    ok = spread > 1e-4 * np.maximum(1.0, np.abs(lw).max(-1))  # beyond float32 rounding
    if ok.any():
        _, k = array_stats.psislw(-lw[ok], r_eff=1, axis=-1)
        khat[ok] = k
    return float(khat) if khat.ndim == 0 else khat


def vi_khat(
    model: Callable, guide: Callable, *args, num_particles: int = 1000, plate: str | None = None,
    **kwargs,
) -> float | np.ndarray:  # fmt: skip
    """Pareto k-hat of ``p(x, z) / q(z)``; one per datum with ``plate`` (amortized guides)."""
    lw = vi_log_weights(model, guide, *args, num_particles=num_particles, plate=plate, **kwargs)
    return pareto_khat(lw)


def khat_reading(k: float) -> str:
    """``"good"`` (< 0.5), ``"usable"`` (0.5-0.7) or ``"unreliable"`` (> 0.7)."""
    return next(label for bound, label in KHAT_READING if k < bound)
