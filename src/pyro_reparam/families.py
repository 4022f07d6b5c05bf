"""The registry: which distribution families are reparameterizable, and how.

To train a guide ``q_phi(z)`` we need ``grad_phi E_q[f(z)]``. The answer depends on the family:

* ``PATHWISE``: ``z = g_phi(eps)`` with ``eps`` from a fixed noise law (location-scale, inverse
  CDF), so ``grad E[f(z)] = E[f'(g_phi(eps)) grad_phi g_phi(eps)]``.
* ``IMPLICIT``: the sample is a root of ``F_phi(z) = u`` and ``dz/dphi = -(dF/dphi) / q_phi(z)``
  (implicit reparameterization: Gamma, Beta, Dirichlet, Student-t, ...).
* ``RELAXED``: a continuous (or straight-through) stand-in for a discrete family; pathwise but
  biased with respect to the discrete model.
* ``SCORE_FUNCTION``: no pathwise derivative; only ``E[f(z) grad log q_phi(z)]`` is unbiased, and it
  needs variance reduction (baselines, Rao-Blackwellization, leave-one-out) or enumeration.

:func:`reparam_kind` answers for any distribution *instance*, looking through wrappers
(``Independent``, ``.expand``, ``.mask``, ``TransformedDistribution``, ...). Its answer agrees with
what Pyro's ELBOs do with a site: ``SCORE_FUNCTION`` exactly when the site contributes a
score-function term (``fn.has_rsample`` is False, or the family adds one of its own).
"""

from __future__ import annotations

import enum
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyro.distributions as pdist
import torch.distributions as tdist

from pyro_reparam.tables import format_table

__all__ = [
    "Family",
    "Kind",
    "NotReparameterizedError",
    "ReparamInfo",
    "declare",
    "families_table",
    "iter_families",
    "lookup",
    "reparam_info",
    "reparam_kind",
    "require_rsample",
]


class Kind(enum.Enum):
    """How a family's samples carry gradients back to its parameters."""

    PATHWISE = "pathwise"
    IMPLICIT = "implicit"
    RELAXED = "relaxed"
    SCORE_FUNCTION = "score_function"

    @property
    def is_reparameterized(self) -> bool:
        """True when samples are differentiable in the parameters (no score-function term)."""
        return self is not Kind.SCORE_FUNCTION

    @property
    def is_biased(self) -> bool:
        """True for relaxations: the gradient is that of a different (continuous) model."""
        return self is Kind.RELAXED

    def __str__(self) -> str:
        return self.value


# Order used to combine the kinds of components (a mixture is as hard as its hardest part).
_SEVERITY = {Kind.PATHWISE: 0, Kind.IMPLICIT: 1, Kind.RELAXED: 2, Kind.SCORE_FUNCTION: 3}


@dataclass(frozen=True)
class Family:
    """One registry entry: a distribution class and how it is reparameterized."""

    cls: type
    kind: Kind
    note: str = ""

    @property
    def name(self) -> str:
        return f"{self.cls.__module__.split('.')[0]}.{self.cls.__name__}"

    @property
    def enumerable(self) -> bool:
        """Whether the family has finite, enumerable support (class-level default)."""
        value = getattr(self.cls, "has_enumerate_support", False)
        return value if isinstance(value, bool) else False


@dataclass(frozen=True)
class ReparamInfo:
    """What :func:`reparam_info` says about one distribution instance."""

    kind: Kind
    enumerable: bool
    family: str
    note: str
    declared: bool

    @property
    def is_reparameterized(self) -> bool:
        return self.kind.is_reparameterized


class NotReparameterizedError(ValueError):
    """A sample that must carry gradients comes from a family without a pathwise derivative."""


_REGISTRY: dict[type, Family] = {}
# Wrappers whose kind is that of the distributions they hold, found by these accessors.
_DELEGATES: dict[type, Callable[[tdist.Distribution], list[tdist.Distribution]]] = {}
_WARNED_UNDECLARED: set[type] = set()


def declare(cls: type | None = None, kind: Kind | str | None = None, *, note: str = ""):
    """Register how the family ``cls`` is reparameterized.

    Usable as a call, ``declare(MyFamily, Kind.PATHWISE, note="z = mu + s * eps")``, or as a class
    decorator, ``@declare(kind="pathwise")``. Re-declaring a class replaces its entry.
    """
    if kind is None:
        raise TypeError("declare() needs kind=, one of " + ", ".join(k.value for k in Kind))
    kind = _as_kind(kind)

    def register(klass: type) -> type:
        if not (isinstance(klass, type) and issubclass(klass, tdist.Distribution)):
            raise TypeError(
                f"declare() takes a torch.distributions.Distribution subclass, got {klass!r}"
            )
        has_rsample = klass.__dict__.get("has_rsample", getattr(klass, "has_rsample", False))
        if kind.is_reparameterized and has_rsample is False and not _is_wrapper_class(klass):
            raise ValueError(
                f"{klass.__name__} is declared {kind.value} but has_rsample is False: implement "
                f"rsample() and set has_rsample = True, or declare it score_function"
            )
        _REGISTRY[klass] = Family(klass, kind, note)
        _WARNED_UNDECLARED.discard(klass)
        return klass

    return register if cls is None else register(cls)


def _as_kind(kind: Kind | str) -> Kind:
    if isinstance(kind, Kind):
        return kind
    try:
        return Kind(str(kind).lower())
    except ValueError:
        choices = ", ".join(k.value for k in Kind)
        raise ValueError(f"unknown kind {kind!r}; expected one of {choices}") from None


def _is_wrapper_class(klass: type) -> bool:
    return any(issubclass(klass, w) for w in _DELEGATES)


def declare_delegate(cls: type, children: Callable[[tdist.Distribution], list]) -> None:
    """Declare ``cls`` a wrapper whose kind is the worst kind of ``children(instance)``."""
    _DELEGATES[cls] = children


def register_family(family: Family) -> None:
    """Enter ``family`` in the registry as it is (the built-in tables use this)."""
    _REGISTRY[family.cls] = family


def lookup(cls: type) -> Family | None:
    """The registry entry for ``cls`` or its nearest declared ancestor, or None.

    An undeclared subclass that overrides ``score_parts`` (Pyro's hook for partially
    reparameterized samplers, which add a score-function term of their own) does not inherit its
    ancestor's declaration.
    """
    for klass in cls.__mro__:
        if klass in _REGISTRY:
            return _REGISTRY[klass]
        if "score_parts" in klass.__dict__ or klass in _DELEGATES:
            return None
        if klass in (tdist.Distribution, pdist.TorchDistribution):
            return None
    return None


def _delegate_children(fn: tdist.Distribution) -> list[tdist.Distribution] | None:
    for klass in type(fn).__mro__:
        if klass in _REGISTRY:
            return None
        if klass in _DELEGATES:
            return _DELEGATES[klass](fn)
    return None


def reparam_info(fn: tdist.Distribution) -> ReparamInfo:
    """How ``fn``'s samples get gradients, looking through wrappers.

    An instance whose ``has_rsample`` is False (e.g. after ``.has_rsample_(False)``) is
    ``SCORE_FUNCTION`` whatever its family, since that is what Pyro's ELBOs then do.
    """
    if not isinstance(fn, tdist.Distribution):
        raise TypeError(f"reparam_info() takes a distribution instance, got {type(fn).__name__}")
    enumerable = bool(getattr(fn, "has_enumerate_support", False))
    has_rsample = bool(getattr(fn, "has_rsample", False))
    children = _delegate_children(fn)
    if children is not None:
        infos = [reparam_info(c) for c in children]
        worst = max(infos, key=lambda i: _SEVERITY[i.kind])
        kind, family, note, declared = worst.kind, worst.family, worst.note, worst.declared
    else:
        entry = lookup(type(fn))
        if entry is None:
            _warn_undeclared(type(fn))
            family, declared = type(fn).__name__, False
            if _overrides_score_parts(type(fn)):
                kind, note = Kind.SCORE_FUNCTION, "undeclared; overrides score_parts"
            else:
                kind = Kind.PATHWISE if has_rsample else Kind.SCORE_FUNCTION
                note = "undeclared: from has_rsample"
        else:
            kind, family, note, declared = entry.kind, entry.name, entry.note, True
    if not has_rsample and kind is not Kind.SCORE_FUNCTION:
        kind, note = Kind.SCORE_FUNCTION, "has_rsample is False on this instance"
    return ReparamInfo(kind, enumerable, family, note, declared)


def _overrides_score_parts(cls: type) -> bool:
    for klass in cls.__mro__:
        if klass in (tdist.Distribution, pdist.TorchDistribution):
            return False
        if "score_parts" in klass.__dict__:
            return True
    return False


def reparam_kind(fn: tdist.Distribution) -> Kind:
    """The :class:`Kind` of a distribution instance; see :func:`reparam_info` for the details."""
    return reparam_info(fn).kind


def _warn_undeclared(cls: type) -> None:
    if cls in _WARNED_UNDECLARED:
        return
    _WARNED_UNDECLARED.add(cls)
    warnings.warn(
        f"{cls.__name__} is not declared in the pyro_reparam registry; its kind is taken from "
        f"has_rsample={getattr(cls, 'has_rsample', False)!r}. Declare it with "
        f"pyro_reparam.declare({cls.__name__}, kind=...) (pathwise, implicit, relaxed or "
        f"score_function) to silence this warning.",
        UserWarning,
        stacklevel=3,
    )


def require_rsample(fn: tdist.Distribution, site: str | None = None) -> tdist.Distribution:
    """Return ``fn`` if its samples carry pathwise gradients, else raise an explanatory error.

    Use it where a sample must be differentiable, e.g. the weights of a Bayesian layer:
    ``w = require_rsample(q, site="fc1.weight").rsample()``.
    """
    info = reparam_info(fn)
    if info.is_reparameterized:
        return fn
    where = f"site {site!r}" if site else "this sample"
    options = [
        "a reparameterizable family (pyro_reparam.families_table() lists them)",
        "a continuous relaxation (e.g. RelaxedBernoulliStraightThrough) if a biased gradient is ok",
    ]
    if info.enumerable:
        options.append('exact enumeration (infer={"enumerate": "parallel"} with TraceEnum_ELBO)')
    options.append("the score-function estimator with a baseline: pyro_reparam.route(...).elbo()")
    raise NotReparameterizedError(
        f"{where} is drawn from {info.family} ({info.note or 'no rsample'}), whose samples carry "
        f"no gradient to its parameters: a loss computed from it has no pathwise gradient. "
        f"Options: " + "; ".join(options) + "."
    )


def iter_families() -> Iterator[Family]:
    """Every declared family, sorted by kind then name."""
    yield from sorted(_REGISTRY.values(), key=lambda f: (_SEVERITY[f.kind], f.name))


def families_table(markdown: bool = False) -> str:
    """A table of every declared family: name, kind, enumerable support, note."""
    rows = [(f.name, f.kind.value, "yes" if f.enumerable else "", f.note) for f in iter_families()]
    header = ("family", "kind", "enumerable", "how")
    return format_table(header, rows, markdown=markdown)
