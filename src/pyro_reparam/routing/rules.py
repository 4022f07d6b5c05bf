"""The routing rule for one site: what was asked for it, its support size, its default route.

:func:`~pyro_reparam.routing.route` applies these to the sites of the planning trace and the
routed ELBO applies the same functions to sites it meets later, so a site is routed the same
way whether or not the planning trace contained it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributions.constraints as constraints
from pyro.poutine.subsample_messenger import _Subsample

from pyro_reparam.families import Kind, ReparamInfo
from pyro_reparam.routing.plan import ESTIMATORS, RoutingRule


class RoutingError(ValueError):
    """A plan that cannot be built as asked; the message names the sites and the choices."""


def latent_sites(trace):
    """``(name, site)`` for the latent sample sites of a trace, in order (no subsample sites,
    no observed sites, no auxiliary sites of autoguides)."""
    for name, site in trace.nodes.items():
        if (
            site["type"] == "sample"
            and not site["is_observed"]
            and not isinstance(site["fn"], _Subsample)
            and not site["infer"].get("is_auxiliary", False)
        ):
            yield name, site


def requested_estimator(name: str, infer: Mapping, overrides: Mapping[str, str]) -> str | None:
    """The estimator asked for a site: ``route(estimators={name: ...})`` first, then the site's
    ``infer={"estimator": ...}``, then Pyro's ``infer={"enumerate": "parallel"}``."""
    est = overrides.get(name) or infer.get("estimator")
    if est is None and infer.get("enumerate") == "parallel":
        est = "enumerate"
    if est is not None and est not in ESTIMATORS:
        raise RoutingError(
            f"route: site {name!r} asks for estimator {est!r}; choose one of "
            + ", ".join(ESTIMATORS)
        )
    return est


def support_size(fn) -> int | None:
    """The number of values of a discrete distribution, read from its support constraint
    without allocating the support (``None``: infinite or unknown)."""
    base = getattr(fn, "base_dist", None)
    if base is not None and not isinstance(fn, torch.distributions.Independent):
        return support_size(base)
    if isinstance(fn, torch.distributions.Independent):
        if fn.reinterpreted_batch_ndims:
            return None
        return support_size(fn.base_dist)
    support = fn.support
    if support is constraints.boolean:
        return 2
    if isinstance(support, constraints.integer_interval):
        lower = torch.as_tensor(support.lower_bound).min().item()
        upper = torch.as_tensor(support.upper_bound).max().item()
        return int(upper - lower + 1)
    if support is constraints.one_hot:
        return int(fn.event_shape[-1])
    return None


def check_enumerable(name: str, info: ReparamInfo, size: int | None, limit: int) -> None:
    """Refuse, before anything is allocated, to enumerate a site without a finite support of at
    most ``limit`` values."""
    if not info.enumerable:
        raise RoutingError(
            f"route: site {name!r} ({info.family}) has no enumerable support; use 'score'"
        )
    if size is None or size > limit:
        shown = "an unknown number of" if size is None else f"{size:,}"
        raise RoutingError(
            f"route: site {name!r} ({info.family}) has {shown} values, above the enumeration "
            f"limit max_enum_support={limit}; use 'score', or raise max_enum_support if the "
            f"sum over {shown} values per datum fits in memory"
        )


def default_estimator(info: ReparamInfo, size: int | None, rule: RoutingRule) -> str:
    """The route of a site nobody asked anything for: its family decides."""
    if info.kind is Kind.SCORE_FUNCTION:
        small = info.enumerable and size is not None and size <= rule.max_enum_support
        return "enumerate" if rule.enumerate_discrete and small else "score"
    if info.kind is Kind.RELAXED:
        return "relaxed"
    return "pathwise"


def estimator_for(name: str, fn, infer: Mapping, info: ReparamInfo, rule: RoutingRule) -> str:
    """The estimator of a site under ``rule`` (what was asked, else the family's default)."""
    asked = requested_estimator(name, infer, rule.overrides)
    size = support_size(fn) if info.kind is Kind.SCORE_FUNCTION else None
    if asked == "enumerate":
        check_enumerable(name, info, size, rule.max_enum_support)
        return asked
    return asked or default_estimator(info, size, rule)


def plate_nesting(*traces) -> int:
    """How many vectorized plate dims the traces use: ``max(-frame.dim)`` (0 without plates)."""
    dims = [
        -frame.dim
        for trace in traces
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized and frame.dim is not None
    ]
    return max(dims, default=0)


def positive_int(value, what: str) -> int:
    """``value`` if it is a positive integer, else a one-line error naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RoutingError(f"route: {what} must be a positive integer, got {value!r}")
    return value
