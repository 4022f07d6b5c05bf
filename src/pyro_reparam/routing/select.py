"""``route(..., select="measure")``: choose the score-function estimator by a measured pilot.

The cheap deterministic rule routes discrete sites to leave-one-out over 4 particles. With
``select="measure"`` the candidates that fit the plan's score-function sites, each at most the
plan's ``K`` model evaluations per step, are each drawn ``pilot_draws`` times at the current
parameters (on the planning arguments, or on ``pilot_batches`` as in training), and the plan
keeps the one with the lowest ``tr Cov x evaluations per draw`` (the variance of the gradient
at an equal evaluation budget); the plan's table shows every candidate's figure, its standard
error, its seconds per draw, and why the winner won. Every candidate is unbiased:

* ``loo``: :class:`~pyro_reparam.estimators.ScoreFunctionELBO`, leave-one-out over ``K``;
* ``disarm``: :class:`~pyro_reparam.estimators.DisARM_ELBO` with ``K / 2`` antithetic pairs,
  when every score-function site is Bernoulli, Categorical or OneHotCategorical;
* ``arms``: :class:`~pyro_reparam.estimators.ARMS_ELBO` with ``K`` copula draws, when every
  score-function site is Bernoulli;
* ``taylor_disarm``: :class:`~pyro_reparam.estimators.TaylorDisARM_ELBO`, DisARM with the
  midpoint Taylor control variate, with ``K // 3`` pairs (3 evaluations each, within the
  budget), when every score-function site is Bernoulli and ``K >= 3``.

Enumeration, where the rule chose it, has zero variance and is kept without measuring. The
measurement is over the whole plan (all score-function sites share one ELBO), on every
parameter of the model and guide.
"""

from __future__ import annotations

from dataclasses import replace

import pyro.distributions as dist
import pyro.poutine as poutine

from pyro_reparam.estimators import ARMS_ELBO, DisARM_ELBO, TaylorDisARM_ELBO
from pyro_reparam.measure import pilot_variance
from pyro_reparam.routing.plan import RoutingPlan

SELECTIONS = ("rule", "measure")
CANDIDATE_CLASS = {
    "loo": "ScoreFunctionELBO",
    "disarm": "DisARM_ELBO",
    "arms": "ARMS_ELBO",
    "taylor_disarm": "TaylorDisARM_ELBO",
}


def _base(fn):
    while isinstance(fn, dist.Independent):
        fn = fn.base_dist
    return fn


def candidates(plan: RoutingPlan, guide_fns: dict) -> list[str]:
    """The estimators that fit ``plan``'s score-function sites (``guide_fns``: site -> fn)."""
    scored = plan.sites_with("score")
    if plan.elbo_class != "ScoreFunctionELBO" or not scored or plan.num_particles < 2:
        return []
    if plan.forced_score or plan.linear or any(plan[n].variance_reduction != "loo" for n in scored):
        return []
    bases = [_base(guide_fns[n]) for n in scored]
    out = ["loo"]
    if plan.num_particles % 2 == 0 and all(
        isinstance(b, (dist.Bernoulli, dist.Categorical, dist.OneHotCategorical)) for b in bases
    ):
        out.append("disarm")
    if all(isinstance(b, dist.Bernoulli) for b in bases):
        out.append("arms")
        if plan.num_particles >= 3:
            out.append("taylor_disarm")
    return out


def particles_of(name: str, plan: RoutingPlan) -> int:
    """The particles candidate ``name`` draws per step within the plan's budget."""
    return 2 * (plan.num_particles // 3) if name == "taylor_disarm" else plan.num_particles


def _elbo(name: str, plan: RoutingPlan):
    if name == "loo":
        return plan.elbo()
    if name == "disarm":
        return DisARM_ELBO(
            num_pairs=plan.num_particles // 2, max_plate_nesting=plan.max_plate_nesting
        )
    if name == "taylor_disarm":
        return TaylorDisARM_ELBO(
            num_pairs=plan.num_particles // 3, max_plate_nesting=plan.max_plate_nesting
        )
    return ARMS_ELBO(num_particles=plan.num_particles, max_plate_nesting=plan.max_plate_nesting)


def select_by_measurement(
    plan: RoutingPlan, model, guide, args, kwargs, *, pilot_draws: int, pilot_batches=None
) -> RoutingPlan:
    """``plan`` with its score-function estimator chosen by a pilot (see the module doc)."""
    if plan.elbo_class == "TraceEnum_ELBO":
        plan.notes.append("select='measure': enumeration is exact (zero variance); not measured")
        return plan
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    fns = {n: s["fn"] for n, s in guide_trace.nodes.items() if s["type"] == "sample"}
    names = candidates(plan, fns)
    if len(names) < 2:
        plan.notes.append(
            "select='measure': one candidate estimator fits these sites"
            + (f" ({names[0]})" if names else "")
            + "; the rule's choice is kept"
        )
        return plan
    stats = {}
    for name in names:
        elbo = _elbo(name, plan)
        batches = pilot_batches
        call = () if batches is not None else args
        stats[name] = pilot_variance(
            model, guide, elbo, *call, num_draws=pilot_draws, batches=batches, **kwargs
        )
    best = min(stats, key=lambda n: stats[n].variance_per_evaluation)
    runner = min((n for n in stats if n != best), key=lambda n: stats[n].variance_per_evaluation)
    b, r = stats[best], stats[runner]
    gap = (r.variance_per_evaluation - b.variance_per_evaluation) / max(
        (b.variance_per_evaluation_se**2 + r.variance_per_evaluation_se**2) ** 0.5, 1e-300
    )
    why = (
        f"measured: tr Cov x evaluations {b.variance_per_evaluation:.4g} "
        f"+- {b.variance_per_evaluation_se:.2g}, lowest of {len(stats)} "
        f"({runner}: {r.variance_per_evaluation:.4g}, {gap:.1f} standard errors above)"
    )
    rows = [
        {
            "estimator": n,
            "evaluations": s.evaluations_per_draw,
            "draws": s.num_draws,
            "trace_cov": s.trace_cov,
            "trace_cov_se": s.trace_cov_se,
            "variance_x_evaluations": s.variance_per_evaluation,
            "ms_per_draw": 1000 * s.seconds_per_draw,
            "chosen": n == best,
        }
        for n, s in stats.items()
    ]
    sites = dict(plan.sites)
    for n in plan.sites_with("score"):
        sites[n] = replace(sites[n], variance_reduction=best, why=why)
    return replace(
        plan,
        sites=sites,
        elbo_class=CANDIDATE_CLASS[best],
        num_particles=particles_of(best, plan),
        baseline=best if best != "loo" else plan.baseline,
        selection=rows,
        notes=list(plan.notes),
    )
