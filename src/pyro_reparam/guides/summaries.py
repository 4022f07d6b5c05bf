"""Posterior summaries of one site's guide family: medians and quantiles.

A location-scale site is ``z = T(u)``, ``u = loc + scale * eps``, ``eps ~ F``; its summaries are
``T(loc)`` and ``T(loc + scale * F^{-1}(p))``, exactly the median and quantiles when ``T`` is
elementwise and increasing (``real``, ``positive``, ``unit_interval``, ``independent`` of those),
and for other supports (simplex, ordered, correlation and positive-definite matrices) the images
of the unconstrained ones, as Pyro's ``AutoNormal`` reports them. Quantiles have shape
``(len(p),) + site shape``.
"""

from __future__ import annotations

import torch
from torch.distributions.transforms import Transform

from pyro_reparam.guides import continuous


def median(family: str, transform: Transform, params: dict) -> torch.Tensor:
    """Kumaraswamy(a, b): ``(1 - 2^{-1/b})^{1/a}``; point mass and location-scale: ``T(loc)``."""
    if family == "kumaraswamy":
        return (1 - 0.5 ** params["b"].reciprocal()) ** params["a"].reciprocal()
    return transform(params["loc"])


def quantiles(family: str, transform: Transform, params: dict, p: torch.Tensor) -> torch.Tensor:
    """Kumaraswamy: ``(1 - (1 - p)^{1/b})^{1/a}``; point mass: its value at every level."""
    if family == "kumaraswamy":
        a, b = params["a"], params["b"]
        p = p.to(a).reshape((-1,) + (1,) * a.dim())
        return (1 - (1 - p) ** b.reciprocal()) ** a.reciprocal()
    loc = params["loc"]
    p = p.to(loc).reshape((-1,) + (1,) * loc.dim())
    if family == "delta":
        value = transform(loc)
        return value.expand((len(p), *value.shape)).clone()
    return transform(loc + params["scale"] * continuous.standard_icdf(family, p))


def summary(family: str, transform: Transform, params: dict, levels) -> torch.Tensor:
    """The median (``levels`` None) or the quantiles at ``levels``. A site of a joint Gaussian
    is summarized as ``normal`` with its marginal ``scale``."""
    if levels is None:
        return median(family, transform, params)
    return quantiles(family, transform, params, levels)


def check_levels(quantiles) -> torch.Tensor:
    """The requested levels as a 1-d tensor, each in (0, 1)."""
    levels = torch.as_tensor(quantiles, dtype=torch.get_default_dtype())
    if levels.dim() != 1 or not ((levels > 0) & (levels < 1)).all():
        raise ValueError(
            f"AutoReparamGuide.quantiles: quantiles must be a list of numbers in (0, 1), "
            f"got {quantiles!r}"
        )
    return levels
