"""The routing plan: one record per latent site and of the ELBO that implements them.

The plan is the single source of truth: :func:`~pyro_reparam.routing.route` fills it, the
builder (:func:`~pyro_reparam.routing.build.build_elbo`) turns exactly it into a Pyro ELBO, and
``str(plan)`` prints what that ELBO does. It records what was built (ELBO class, particles,
vectorization, plate nesting, per-site baseline and KL) and the rule that routes sites the
planning trace did not contain (sites whose names change between steps, e.g. in a subsampled
sequential plate), so that no site is ever routed silently to the bare score function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pyro.infer import ELBO

from pyro_reparam.families import Kind
from pyro_reparam.tables import format_table

ESTIMATORS = ("pathwise", "relaxed", "enumerate", "score")
LINEAR_ESTIMATORS = ("local", "flipout")
VARIANCE_REDUCTION = {
    "loo": "leave-one-out over {k} particles: per-datum baseline, no state",
    "decaying": "running-average baseline (one scalar per site)",
    "nn": "input-dependent neural baseline from the site's infer dict",
    "value": "the baseline_value from the site's infer dict",
    "none": "bare score function (no baseline)",
    "disarm": "DisARM: {k} particles as antithetic pairs",
    "arms": "ARMS: {k} Dirichlet-copula draws",
    "taylor_disarm": "DisARM with the midpoint Taylor control variate: {k} particles as "
    "antithetic pairs, 3 model evaluations per pair",
}


@dataclass(frozen=True)
class SiteRoute:
    """The estimator chosen for one latent site, and the reason.

    ``kl`` is how the site's ``log p - log q`` term is estimated: ``"closed form"`` (analytic
    KL), ``"Monte Carlo"``, or ``"-"`` for enumerated sites (exact sum)."""

    name: str
    family: str
    batch_shape: tuple
    event_shape: tuple
    kind: Kind
    estimator: str
    variance_reduction: str
    why: str
    kl: str = "Monte Carlo"

    @property
    def biased(self) -> bool:
        return self.estimator == "relaxed"


@dataclass(frozen=True)
class RoutingRule:
    """How a site that the planning trace did not contain is routed: by its family (the
    registry's kind), its infer keys and the per-name overrides, exactly as :func:`route`
    routes the sites it saw."""

    overrides: Mapping[str, str]
    enumerate_discrete: bool
    max_enum_support: int


@dataclass
class RoutingPlan:
    """Per-site estimators for a (model, guide) pair and the ELBO that implements them.

    :ivar sites: the routes of the sites in the planning trace, by name.
    :ivar elbo_class: the ELBO :meth:`elbo` builds (``ScoreFunctionELBO``, ``TraceEnum_ELBO``,
        ``TraceMeanField_ELBO`` or ``Trace_ELBO``).
    :ivar num_particles: particles per step; ``vectorize_particles``: drawn as one batch.
    :ivar max_plate_nesting: plate dims of the model and guide, without the particle dim.
    :ivar baseline: the baseline of score-function sites not listed in ``sites``.
    :ivar linear: ``"local"`` or ``"flipout"`` when a linear-layer estimator wraps the ELBO.
    :ivar selection: with ``route(select="measure")``, the pilot's figures per candidate.
    :ivar direct: for a ready model's own ``model``/``guide``, its ``direct_elbo(plan)``: the
        same ELBO computed without tracing, which :meth:`elbo` returns (the plan says so).
    """

    sites: dict[str, SiteRoute]
    elbo_class: str
    num_particles: int
    vectorize_particles: bool
    max_plate_nesting: int
    baseline: str
    rule: RoutingRule
    linear: str | None = None
    notes: list[str] = field(default_factory=list)
    selection: list[dict] | None = None
    direct: Callable[[RoutingPlan], ELBO | None] | None = field(
        default=None, repr=False, compare=False
    )

    def __getitem__(self, name: str) -> SiteRoute:
        return self.sites[name]

    def sites_with(self, estimator: str) -> list[str]:
        return [n for n, s in self.sites.items() if s.estimator == estimator]

    @property
    def forced_score(self) -> list[str]:
        """Sites of reparameterizable families routed to the score function on request."""
        return [
            n for n, s in self.sites.items() if s.estimator == "score" and s.kind.is_reparameterized
        ]

    @property
    def elbo_name(self) -> str:
        return self.elbo_class

    def describe_elbo(self) -> str:
        """One line: the ELBO class, particles, vectorization and plate nesting."""
        k = self.num_particles
        parts = f"{k} {'vectorized ' if self.vectorize_particles else ''}particle"
        parts += "s" if k > 1 else ""
        line = f"ELBO: {self.elbo_class}, {parts}, max_plate_nesting={self.max_plate_nesting}"
        if self.elbo_class == "TaylorDisARM_ELBO":  # each pair is also evaluated at its midpoint
            line += f", {3 * k // 2} model evaluations per step"
        if self.linear:
            line += f", linear layers: {self.linear}"
        return line

    def __str__(self) -> str:
        header = ("site", "family", "shape", "kind", "estimator", "variance reduction", "KL", "why")
        rows = [
            (
                s.name,
                s.family,
                _shape_str(s.batch_shape, s.event_shape),
                s.kind.value,
                s.estimator + (" (biased)" if s.biased else ""),
                s.variance_reduction,
                s.kl,
                s.why,
            )
            for s in self.sites.values()
        ]
        lines = [format_table(header, rows, rule=True), self.describe_elbo()]
        if self.selection:
            lines.append("measured pilot (select='measure'):")
            lines.append(
                format_table(
                    ("candidate", "evals", "draws", "tr Cov", "tr Cov x evals", "ms/draw"),
                    [
                        (
                            r["estimator"] + (" (chosen)" if r["chosen"] else ""),
                            r["evaluations"],
                            r["draws"],
                            f"{r['trace_cov']:.4g} +- {r['trace_cov_se']:.2g}",
                            f"{r['variance_x_evaluations']:.4g}",
                            f"{r['ms_per_draw']:.1f}",
                        )
                        for r in self.selection
                    ],
                    rule=True,
                )
            )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    __repr__ = __str__

    def elbo(self, direct: bool = True, **kwargs) -> ELBO:
        """A new ELBO that implements this plan (a fresh object: baselines keep state).

        With :attr:`direct` set (a ready model's own pair) and no keyword arguments, the
        model's direct ELBO; ``direct=False``: the traced :class:`~.build.RoutedELBO`.
        Keyword arguments go to the traced ELBO's constructor; those the plan fixes
        (``num_particles``, ``vectorize_particles``, ``max_plate_nesting``) must agree with it:
        route again to change them."""
        from pyro_reparam.routing.build import build_elbo

        if direct and self.direct is not None and not kwargs:
            elbo = self.direct(self)
            if elbo is not None:
                return elbo
        return build_elbo(self, **kwargs)


def _shape_str(batch_shape, event_shape) -> str:
    b = "x".join(str(d) for d in batch_shape) or "-"
    return b + (" | " + "x".join(str(d) for d in event_shape) if event_shape else "")
