"""Mean-field families for continuous sites: their parameters and each site's distribution.

Site ``z`` with support ``S`` and bijection ``T: R^m -> S`` (:func:`~.bijections.bijection`):

* ``normal`` / ``laplace`` / ``studentt`` (4 degrees of freedom): ``u ~ F(loc, scale)``
  elementwise, ``z = T(u)``, ``log q(z) = log f(u) - log|det dT/du|``: a
  ``TransformedDistribution`` whose base has the unconstrained event dims (those of ``R^m``,
  e.g. one for an ``LKJCholesky`` site whose values are matrices);
* ``delta``: ``z = T(loc)``, a point mass (MAP in the constrained space, as ``AutoDelta``);
* ``kumaraswamy``: ``z ~ Kumaraswamy(a, b)`` on the unit interval itself, no bijection.

``loc`` and ``scale`` have the site's batch shape plus the unconstrained event shape; ``loc``
starts at ``T^{-1}(z0)`` with ``z0`` from ``init_loc_fn``, ``scale`` at ``init_scale``.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch.distributions.transforms import Transform

from pyro_reparam.distributions import Kumaraswamy

FAMILIES = ("normal", "laplace", "studentt", "kumaraswamy", "delta")
PARAMS = {
    "normal": ("loc", "scale"),
    "laplace": ("loc", "scale"),
    "studentt": ("loc", "scale"),
    "kumaraswamy": ("a", "b"),
    "delta": ("loc",),
}
SCALE_CONSTRAINT = constraints.softplus_positive  # as AutoNormal
_STUDENT_DF = 4.0
_LOCATION_SCALE = {
    "normal": dist.Normal,
    "laplace": dist.Laplace,
    "studentt": lambda loc, scale: dist.StudentT(_STUDENT_DF, loc, scale),
}


def _strip_independent(support):
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support


def is_real(support) -> bool:
    """True for ``real`` and ``independent(real, n)``: no bijection is needed."""
    return _strip_independent(support) is constraints.real


def check(name: str, site: dict, family: str) -> None:
    """Refuse a family the site's support cannot carry."""
    support = site["fn"].support
    if family == "kumaraswamy" and _strip_independent(support) is not constraints.unit_interval:
        raise ValueError(
            f"AutoReparamGuide: site {name!r} has support {support}; kumaraswamy needs the unit "
            "interval (e.g. a Beta site); choose normal, laplace, studentt or delta for it"
        )


def init_params(
    family: str, site: dict, transform: Transform, event_dim: int, init_scale: float
) -> dict:
    """``{key: (initial value, constraint, event_dim)}`` from the prototype value ``z0``;
    ``event_dim``: the unconstrained event dims.

    Kumaraswamy: ``b = 2`` and ``a = log(1 - 2^{-1/b}) / log z0``, so that the median
    ``(1 - 2^{-1/b})^{1/a}`` is ``z0``.
    """
    value, fn = site["value"].detach(), site["fn"]
    if family == "kumaraswamy":
        z0 = value.clamp(1e-3, 1 - 1e-3)
        b = torch.full_like(z0, 2.0)
        a = torch.log1p(-(2.0 ** -b.reciprocal())) / z0.log()
        return {"a": (a, SCALE_CONSTRAINT, fn.event_dim), "b": (b, SCALE_CONSTRAINT, fn.event_dim)}
    u = transform.inv(value).detach()
    params = {"loc": (u, constraints.real, event_dim)}
    if family != "delta":
        params["scale"] = (torch.full_like(u, init_scale), SCALE_CONSTRAINT, event_dim)
    return params


def distribution(family: str, site: dict, transform: Transform, event_dim: int, params: dict):
    """The site's guide distribution; ``event_dim`` is that of the unconstrained parameters."""
    fn = site["fn"]
    if family == "kumaraswamy":
        return Kumaraswamy(params["a"], params["b"]).to_event(fn.event_dim)
    if family == "delta":
        return dist.Delta(transform(params["loc"]), event_dim=fn.event_dim)
    base = _LOCATION_SCALE[family](params["loc"], params["scale"]).to_event(event_dim)
    if is_real(fn.support):
        return base
    return dist.TransformedDistribution(base, transform.with_cache())


def standard_icdf(family: str, p: torch.Tensor) -> torch.Tensor:
    """``F^{-1}(p)`` of the standard normal, Laplace and Student-t(4) laws."""
    if family == "normal":
        return math.sqrt(2.0) * torch.erfinv(2 * p - 1)
    if family == "laplace":
        return -torch.sign(p - 0.5) * torch.log1p(-2 * (p - 0.5).abs())
    # Student's t with 4 degrees of freedom has a closed-form inverse CDF
    a = 4 * p * (1 - p)
    s = torch.sqrt(a)
    return torch.sign(p - 0.5) * 2 * torch.sqrt(torch.cos(torch.arccos(s) / 3) / s - 1)
