"""The one builder: a :class:`~pyro_reparam.routing.plan.RoutingPlan` -> the Pyro ELBO it prints.

* every site pathwise, every KL in closed form: ``TraceMeanField_ELBO``; else ``Trace_ELBO``;
* enumerated sites: ``TraceEnum_ELBO`` with them marked for parallel enumeration (any other
  score site then gets DiCE without a baseline, which the plan allows only when it says so);
* otherwise score-function sites: :class:`~pyro_reparam.estimators.ScoreFunctionELBO`, with
  the plan's baseline per site;
* ``plan.linear``: the local-reparameterization or Flipout handler around every step.

The result is a :class:`RoutedELBO`: it routes each guide site by the plan (sites the planning
trace did not contain by the plan's rule) and refuses a site its inner ELBO would otherwise
give the bare score function.
"""

from __future__ import annotations

import contextlib

from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample

from pyro_reparam.distributions import ScoreFunction
from pyro_reparam.estimators import (
    ARMS_ELBO,
    BASELINES,
    DisARM_ELBO,
    ScoreFunctionELBO,
    TaylorDisARM_ELBO,
)
from pyro_reparam.families import reparam_info
from pyro_reparam.routing.plan import RoutingPlan
from pyro_reparam.routing.rules import RoutingError, estimator_for

SCORE_ELBOS = ("ScoreFunctionELBO", "DisARM_ELBO", "ARMS_ELBO", "TaylorDisARM_ELBO")
_FIXED = ("num_particles", "vectorize_particles", "max_plate_nesting")


def build_elbo(plan: RoutingPlan, **kwargs) -> RoutedELBO:
    """The ELBO that implements ``plan``; ``kwargs`` go to the inner ELBO's constructor."""
    fixed = {
        "num_particles": plan.num_particles,
        "vectorize_particles": plan.vectorize_particles,
        "max_plate_nesting": plan.max_plate_nesting,
    }
    for key in _FIXED:
        if key in kwargs and kwargs[key] != fixed[key]:
            raise RoutingError(
                f"plan.elbo: the plan was built with {key}={fixed[key]!r}, not {kwargs[key]!r}; "
                f"route again with {key}=... to change it"
            )
    extra = sorted(set(kwargs) - set(_FIXED))
    if extra and plan.elbo_class in SCORE_ELBOS[1:]:
        raise RoutingError(
            f"plan.elbo: {plan.elbo_class} takes no {', '.join(extra)} (its options are the "
            "plan's particles and plate nesting); route again to change those, or build the "
            "ELBO yourself"
        )
    kwargs.update(fixed)
    if plan.elbo_class == "TraceEnum_ELBO":
        inner = TraceEnum_ELBO(**kwargs)
    elif plan.elbo_class == "DisARM_ELBO":
        inner = DisARM_ELBO(
            num_pairs=plan.num_particles // 2, max_plate_nesting=plan.max_plate_nesting
        )
    elif plan.elbo_class == "TaylorDisARM_ELBO":
        inner = TaylorDisARM_ELBO(
            num_pairs=plan.num_particles // 2, max_plate_nesting=plan.max_plate_nesting
        )
    elif plan.elbo_class == "ARMS_ELBO":
        inner = ARMS_ELBO(
            num_particles=plan.num_particles, max_plate_nesting=plan.max_plate_nesting
        )
    elif plan.elbo_class == "ScoreFunctionELBO":
        site_baselines = {
            n: s.variance_reduction
            for n, s in plan.sites.items()
            if s.estimator == "score" and s.variance_reduction in BASELINES
        }
        inner = ScoreFunctionELBO(baseline=plan.baseline, site_baselines=site_baselines, **kwargs)
    elif plan.elbo_class == "TraceMeanField_ELBO":
        inner = TraceMeanField_ELBO(**kwargs)
    else:
        inner = Trace_ELBO(**kwargs)
    return RoutedELBO(inner, plan)


def linear_handler(kind: str | None):
    """A fresh handler of the linear-layer estimator ``kind`` (``None``: a no-op context)."""
    if kind is None:
        return contextlib.nullcontext()
    from pyro_reparam.estimators import Flipout, LocalReparameterization

    return LocalReparameterization() if kind == "local" else Flipout()


class _ApplyRoute(Messenger):
    """Marks guide sites for enumeration and forces the score function where the plan (or, for
    a site the planning trace did not contain, its rule) says; refuses a site that the inner
    ELBO could only give the bare score function."""

    def __init__(self, plan: RoutingPlan):
        super().__init__()
        self.plan = plan
        self.score_ok = plan.elbo_class in SCORE_ELBOS or plan.baseline == "none"

    def _pyro_sample(self, msg):
        if msg["is_observed"] or isinstance(msg["fn"], _Subsample):
            return
        if msg["infer"].get("is_auxiliary", False):
            return
        name = msg["name"]
        info = reparam_info(msg["fn"])
        route = self.plan.sites.get(name)
        if route is not None:
            est = route.estimator
        else:
            est = estimator_for(name, msg["fn"], msg["infer"], info, self.plan.rule)
        if est == "enumerate":
            if self.plan.elbo_class != "TraceEnum_ELBO":
                raise RoutingError(self._unplanned(name, info, "enumeration"))
            msg["infer"] = {**msg["infer"], "enumerate": "parallel"}
        elif est == "score":
            if not self.score_ok:
                raise RoutingError(self._unplanned(name, info, "the score function"))
            if info.kind.is_reparameterized:
                msg["fn"] = ScoreFunction(msg["fn"])

    def _unplanned(self, name, info, what) -> str:
        return (
            f"site {name!r} ({info.family.split('.')[-1]}) needs {what}, which this plan's "
            f"{self.plan.elbo_class} cannot give it (the planning trace did not contain it); "
            "route on arguments whose trace contains such a site, or name its estimator in "
            "route(estimators=...)"
        )


class RoutedELBO(ELBO):
    """A Pyro ELBO run as the plan configures it: per-site routes, enumeration marks, forced
    score-function sites and the linear-layer estimator. ``inner`` is the ELBO doing the work;
    ``plan`` the plan it implements. Plugs into ``pyro.infer.SVI`` like any ELBO."""

    def __init__(self, inner: ELBO, plan: RoutingPlan):
        super().__init__(
            num_particles=inner.num_particles,
            max_plate_nesting=plan.max_plate_nesting,
            vectorize_particles=inner.vectorize_particles,
        )
        self.inner = inner
        self.plan = plan
        self._apply = _ApplyRoute(plan)

    @property
    def evaluations_per_draw(self) -> int:
        """Model evaluations per step: the inner ELBO's (its particles, unless it says more)."""
        return int(getattr(self.inner, "evaluations_per_draw", self.inner.num_particles))

    def _guide(self, guide):
        return self._apply(guide)

    def _get_trace(self, model, guide, args, kwargs):
        with linear_handler(self.plan.linear):
            return self.inner._get_trace(model, self._guide(guide), args, kwargs)

    def loss(self, model, guide, *args, **kwargs):
        with linear_handler(self.plan.linear):
            return self.inner.loss(model, self._guide(guide), *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        with linear_handler(self.plan.linear):
            return self.inner.loss_and_grads(model, self._guide(guide), *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        with linear_handler(self.plan.linear):
            return self.inner.differentiable_loss(model, self._guide(guide), *args, **kwargs)

    def state_dict(self) -> dict:
        """The inner ELBO's estimator state (baselines), empty when it keeps none."""
        get = getattr(self.inner, "state_dict", None)
        return get() if callable(get) else {}

    def load_state_dict(self, state: dict) -> None:
        load = getattr(self.inner, "load_state_dict", None)
        if callable(load):
            load(state)
        elif state:
            raise RoutingError(
                f"{type(self.inner).__name__} keeps no estimator state, but the state to load "
                f"has {sorted(state)[:3]}"
            )
