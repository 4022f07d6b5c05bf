"""Posterior summaries of a guide's per-site distributions: medians and quantiles.

Each guide distribution is ``base`` (a location-scale family, Kumaraswamy, Delta or a
discrete family) possibly pushed through one bijection to the site's support; a quantile of a
monotone transform is the transform of the quantile, so ``q_p(z) = T(loc + scale * F^{-1}(p))``.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch

from pyro_reparam.distributions import Kumaraswamy


def strip(q):
    """(base distribution, transform or None) of a guide distribution."""
    transform = None
    if isinstance(q, dist.TransformedDistribution):
        (transform,) = q.transforms
        q = q.base_dist
    while isinstance(q, dist.Independent):
        q = q.base_dist
    return q, transform


def median(q, family):
    base, transform = strip(q)
    if family == "discrete":
        if isinstance(base, dist.Bernoulli):
            return (base.logits > 0).to(base.logits.dtype)
        return None
    if isinstance(base, Kumaraswamy):
        return (1 - 0.5 ** base.b.reciprocal()) ** base.a.reciprocal()
    if isinstance(base, dist.Delta):
        return base.v.clone()
    return base.loc.clone() if transform is None else transform(base.loc)


def quantiles(q, family, qs):
    base, transform = strip(q)
    if family in ("discrete", "delta"):
        return None
    if transform is not None and transform.codomain.event_dim > 0:
        return None
    if isinstance(base, Kumaraswamy):
        qs = qs.to(base.a).reshape((-1,) + (1,) * base.a.dim())
        return (1 - (1 - qs) ** base.b.reciprocal()) ** base.a.reciprocal()
    qs = qs.to(base.loc).reshape((-1,) + (1,) * base.loc.dim())
    standard = {
        "normal": lambda p: dist.Normal(0.0, 1.0).icdf(p),
        "laplace": lambda p: -torch.sign(p - 0.5) * torch.log1p(-2 * (p - 0.5).abs()),
        "studentt": lambda p: _student_t4_icdf(p),
    }[family](qs)
    u = base.loc + base.scale * standard
    return u if transform is None else transform(u)


def _student_t4_icdf(p):
    """Closed-form inverse CDF of Student's t with 4 degrees of freedom."""
    a = 4 * p * (1 - p)
    s = torch.sqrt(a)
    return torch.sign(p - 0.5) * 2 * torch.sqrt(torch.cos(torch.arccos(s) / 3) / s - 1)
