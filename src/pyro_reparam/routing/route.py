"""``route``: give every latent site the best gradient estimator, and say why.

Each latent guide site gets one of

* ``pathwise``: PATHWISE and IMPLICIT families (``z = g_phi(eps)``), low variance, unbiased;
* ``relaxed``: pathwise through a continuous relaxation (biased with respect to the discrete model);
* ``enumerate``: exact sum over a small finite support (``TraceEnum_ELBO``, parallel);
* ``score``: the score-function estimator, Rao-Blackwellized by dependency tracking and with a
  baseline (leave-one-out across particles, a running average, or a neural baseline).

When every site is pathwise and every ``KL(q(z) || p(z | ...))`` has a closed form, the KL is
computed analytically (``TraceMeanField_ELBO``): the lowest-variance unbiased estimator of the
two. ``plan.elbo()`` then builds the ELBO that implements the plan, ready for ``pyro.infer.SVI``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import pyro
import pyro.poutine as poutine
import torch
from torch.distributions import kl_divergence

from pyro_reparam.families import Kind, reparam_info
from pyro_reparam.routing.build import linear_handler
from pyro_reparam.routing.plan import (
    LINEAR_ESTIMATORS,
    VARIANCE_REDUCTION,
    RoutingPlan,
    RoutingRule,
    SiteRoute,
)
from pyro_reparam.routing.rules import (
    RoutingError,
    check_enumerable,
    default_estimator,
    latent_sites,
    plate_nesting,
    positive_int,
    requested_estimator,
    support_size,
)
from pyro_reparam.routing.select import SELECTIONS, select_by_measurement

DEFAULT_SCORE_PARTICLES = 4
LINEAR_WHY = {
    "local": (
        "local reparameterization",
        "pre-activations x mu + sqrt(x^2 sigma^2) * eps drawn per example (Kingma et al. 2015): "
        "the same ELBO, lower variance",
    ),
    "flipout": (
        "flipout",
        "one weight-noise draw with random signs per example (Wen et al. 2018): the same ELBO, "
        "decorrelated examples",
    ),
}
BASELINE_CHOICES = ("auto", "loo", "decaying", "nn", "none")


@dataclass(frozen=True)
class _Request:
    """What the caller asked :func:`route` for (the automatic choices are ``None``/``"auto"``)."""

    estimators: Mapping[str, str] = field(default_factory=dict)
    num_particles: int | None = None
    baseline: str = "auto"
    enumerate: str = "auto"
    max_enum_support: int = 16
    analytic_kl: bool | str = "auto"
    linear: str | None = None
    max_plate_nesting: int | None = None


def route(
    model: Callable,
    guide: Callable,
    *args,
    estimators: Mapping[str, str] | None = None,
    num_particles: int | None = None,
    baseline: str = "auto",
    enumerate: str = "auto",
    max_enum_support: int = 16,
    analytic_kl: bool | str = "auto",
    linear: str | None = None,
    max_plate_nesting: int | None = None,
    check: bool = True,
    select: str = "rule",
    pilot_draws: int = 30,
    pilot_batches=None,
    **kwargs,
) -> RoutingPlan:
    """Trace ``guide(*args, **kwargs)`` and choose an estimator for every latent site.

    :param estimators: per-site overrides, ``{"z": "score"|"enumerate"|"pathwise"|"relaxed"}``;
        a guide site's ``infer={"estimator": ...}`` does the same, and Pyro's
        ``infer={"enumerate": "parallel"}`` asks for enumeration.
    :param num_particles: particles per step; default 1 when no site needs the score function,
        else 4 (vectorized, for leave-one-out). Never changed behind your back: when a requested
        value cannot run, ``route`` raises.
    :param baseline: ``"auto"`` (leave-one-out with >= 2 particles, else a running average),
        ``"loo"``, ``"decaying"``, ``"nn"`` (needs Pyro's ``nn_baseline`` infer keys) or
        ``"none"``.
    :param enumerate: ``"auto"`` enumerates the score-function sites when every one of them has
        at most ``max_enum_support`` values (checked before anything is allocated);
        ``"never"``.
    :param analytic_kl: ``"auto"``: the closed-form KL when every site is pathwise and every KL
        has one; ``True`` insists (an error names the sites without one); ``False``: Monte Carlo.
    :param linear: ``"local"`` (local reparameterization) or ``"flipout"``: the estimator for
        ``F.linear`` (and, for Flipout, convolution) layers whose weights are Normal sites.
    :param max_plate_nesting: plate dims of the model; default: read from the traces.
    :param check: run the chosen ELBO once on ``args``; an automatic choice that fails there is
        replaced by the next one (said in the plan's notes), a requested one raises.
    :param select: ``"rule"`` (default: the cheap deterministic rule above) or ``"measure"``:
        for score-function sites, draw ``pilot_draws`` gradients of each unbiased candidate
        within the plan's model evaluations per step (leave-one-out, DisARM, ARMS, DisARM with
        the midpoint Taylor control variate, as the sites allow) at the current parameters
        and keep the lowest variance per evaluation; the plan's table shows the figures
        (:mod:`pyro_reparam.routing.select`). ``pilot_batches``: an
        iterable of argument tuples (e.g. shuffled minibatches) to measure on instead of
        ``args``.

    Planning leaves the caller's random number streams as they were.
    """
    request = _Request(
        dict(estimators or {}),
        num_particles,
        baseline,
        enumerate,
        max_enum_support,
        analytic_kl,
        linear,
        max_plate_nesting,
    )
    _check_request_options(request)
    if select not in SELECTIONS:
        raise RoutingError(
            f"route: select={select!r} is not a choice; use one of "
            + ", ".join(repr(a) for a in SELECTIONS)
        )
    if select == "measure":
        positive_int(pilot_draws, "pilot_draws")
        if pilot_draws < 3:
            raise RoutingError(f"route: pilot_draws must be >= 3, got {pilot_draws}")
    with _rng_untouched():
        plan = _plan(model, guide, args, kwargs, request)
        # a ready model's own pair whose plan its direct ELBO computes needs no trial run: the
        # plan is the one the model is built for, and the direct ELBO checks its inputs
        if check and (select == "measure" or _direct_of(plan, model, guide) is None):
            plan = _checked(plan, model, guide, args, kwargs, request)
        if select == "measure":
            plan = select_by_measurement(
                plan,
                model,
                guide,
                args,
                kwargs,
                pilot_draws=pilot_draws,
                pilot_batches=pilot_batches,
            )
    return _with_direct(plan, model, guide)


def _with_direct(plan: RoutingPlan, model, guide) -> RoutingPlan:
    """Attach the direct ELBO of a ready model whose bound ``model``/``guide`` were routed:
    their owner's ``direct_elbo(plan)`` returns an ELBO that computes exactly this plan's
    estimator from its networks, without tracing (tested equal, loss and gradients under the
    same noise), or ``None`` when the plan is not one it implements."""
    direct = _direct_of(plan, model, guide)
    if direct is not None:
        owner = model.__self__
        plan.direct = direct
        plan.notes.append(
            f"fast path: plan.elbo() is {type(owner).__name__}.direct_elbo(plan), this plan's "
            "ELBO computed from the networks without tracing (the same loss and gradients); "
            "plan.elbo(direct=False) builds the traced one"
        )
    return plan


def _direct_of(plan: RoutingPlan, model, guide):
    """The ``direct_elbo`` method of the ready model that owns both bound ``model`` and
    ``guide``, when it implements ``plan``; else ``None``."""
    owner = getattr(model, "__self__", None)
    direct = getattr(owner, "direct_elbo", None)
    if owner is None or getattr(guide, "__self__", None) is not owner or not callable(direct):
        return None
    return direct if direct(plan) is not None else None


def _check_request_options(req: _Request) -> None:
    if req.num_particles is not None:
        positive_int(req.num_particles, "num_particles")
    positive_int(req.max_enum_support, "max_enum_support")
    if req.max_plate_nesting is not None and (
        isinstance(req.max_plate_nesting, bool)
        or not isinstance(req.max_plate_nesting, int)
        or req.max_plate_nesting < 0
    ):
        raise RoutingError(
            "route: max_plate_nesting must be a non-negative integer, got "
            f"{req.max_plate_nesting!r}"
        )
    choices = {
        "baseline": (req.baseline, BASELINE_CHOICES),
        "enumerate": (req.enumerate, ("auto", "never")),
        "analytic_kl": (req.analytic_kl, ("auto", True, False)),
        "linear": (req.linear, (None, *LINEAR_ESTIMATORS)),
    }
    for what, (value, allowed) in choices.items():
        if not any(value is a or (isinstance(a, str) and value == a) for a in allowed):
            raise RoutingError(
                f"route: {what}={value!r} is not a choice; use one of "
                + ", ".join(repr(a) for a in allowed)
            )


@contextlib.contextmanager
def _rng_untouched():
    """Planning draws samples; the caller's random streams must not notice."""
    state = pyro.util.get_rng_state()
    try:
        yield
    finally:
        pyro.util.set_rng_state(state)


def _plan(model, guide, args, kwargs, req: _Request) -> RoutingPlan:
    handler = linear_handler(req.linear)
    with handler:
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
    layers = _linear_sites(handler, req.linear)
    sites = dict(latent_sites(guide_trace))
    unknown = set(req.estimators) - set(sites)
    if unknown:
        raise RoutingError(
            f"route: estimators names site(s) {sorted(unknown)} that the guide does not sample; "
            f"the guide's latent sites are {sorted(sites)}"
        )
    infos = {n: reparam_info(s["fn"]) for n, s in sites.items()}
    asked = {n: requested_estimator(n, s["infer"], req.estimators) for n, s in sites.items()}
    sizes = {
        n: support_size(s["fn"]) for n, s in sites.items() if infos[n].kind is Kind.SCORE_FUNCTION
    }
    for n in sites:
        _check_request(n, infos[n], asked[n], sizes.get(n), req.max_enum_support)
    chosen, rule = _choose(sites, infos, asked, sizes, req)
    enumerated = [n for n, e in chosen.items() if e == "enumerate"]
    scored = [n for n, e in chosen.items() if e == "score"]
    if enumerated and scored and req.baseline != "none":
        raise RoutingError(
            f"route: site(s) {enumerated} are enumerated and {scored} use the score function; "
            "TraceEnum_ELBO gives the latter no baseline (DiCE). Route "
            f"{enumerated} to 'score' too, or enumerate all, or pass baseline='none' to "
            "accept the bare score function"
        )
    k = req.num_particles or (DEFAULT_SCORE_PARTICLES if scored else 1)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    nesting = req.max_plate_nesting
    if nesting is None:
        nesting = plate_nesting(guide_trace, model_trace)
    kl = _closed_form_kl(sites, model_trace) if not (enumerated or scored) else {}
    use_kl = _use_analytic_kl(req.analytic_kl, kl, sites)
    site_baseline = _site_baseline(req.baseline, k)
    routes = {
        n: _site_route(
            n,
            s,
            infos[n],
            chosen[n],
            asked[n],
            sizes.get(n),
            site_baseline,
            k,
            use_kl,
            kl.get(n),
            req.linear if n in layers else None,
        )
        for n, s in sites.items()
    }
    elbo_class = (
        "TraceEnum_ELBO"
        if enumerated
        else "ScoreFunctionELBO"
        if scored
        else "TraceMeanField_ELBO"
        if use_kl
        else "Trace_ELBO"
    )
    default = site_baseline if scored else ("none" if req.baseline == "none" else "-")
    return RoutingPlan(routes, elbo_class, k, k > 1, nesting, default, rule, req.linear)


def _linear_sites(handler, linear: str | None) -> set[str]:
    """The guide sites whose draws the linear-layer estimator acted on (it must act on some)."""
    if linear is None:
        return set()
    used = set(handler.used_sites())
    if not used:
        ops = "F.linear" if linear == "local" else "F.linear or F.conv*"
        raise RoutingError(
            f"route: linear={linear!r}, but no {ops} call of the model takes a Normal guide draw "
            "as its weight; such layers must call torch.nn.functional (nn.Linear does) on the "
            "sampled weight, or leave linear=None"
        )
    return used


def _choose(sites, infos, asked, sizes, req):
    """Each site's estimator, and the rule for sites met later. Discrete sites are enumerated
    only when no site is left to the score function (no DiCE behind a printed baseline)."""
    rule = RoutingRule(dict(req.estimators), req.enumerate == "auto", req.max_enum_support)
    chosen = {n: asked[n] or default_estimator(infos[n], sizes.get(n), rule) for n in sites}
    if "score" in chosen.values() and rule.enumerate_discrete:
        rule = replace(rule, enumerate_discrete=False)
        chosen = {n: asked[n] or default_estimator(infos[n], sizes.get(n), rule) for n in sites}
    if "enumerate" in chosen.values():
        rule = replace(rule, enumerate_discrete=True)
    return chosen, rule


def _use_analytic_kl(analytic_kl, kl: dict[str, bool], sites) -> bool:
    complete = bool(kl) and all(kl.values())
    if analytic_kl is True and not complete:
        missing = [n for n, ok in kl.items() if not ok] or sorted(sites)
        raise RoutingError(
            f"route: analytic_kl=True, but site(s) {missing} have no closed-form KL (or are "
            "not pathwise); use analytic_kl='auto'"
        )
    return analytic_kl is not False and complete


def _check_request(name, info, asked, size, limit) -> None:
    if asked == "enumerate":
        check_enumerable(name, info, size, limit)
    if asked == "pathwise" and not info.kind.is_reparameterized:
        raise RoutingError(
            f"route: site {name!r} ({info.family}) is {info.kind.value}: it has no pathwise "
            "gradient. Use a reparameterizable or relaxed family in the guide, or 'score'"
        )
    if asked == "relaxed" and info.kind is not Kind.RELAXED:
        raise RoutingError(
            f"route: site {name!r} ({info.family}) is not a relaxation; sample it from e.g. "
            "RelaxedBernoulliStraightThrough in the guide (AutoReparamGuide(discrete='relaxed'))"
        )


def _site_baseline(baseline: str, k: int) -> str:
    if baseline == "auto":
        return "loo" if k >= 2 else "decaying"
    if baseline == "loo" and k < 2:
        return "decaying"
    return baseline


def _closed_form_kl(sites, model_trace) -> dict[str, bool]:
    """Whether ``KL(q || p)`` of each pathwise site has a registered closed form."""
    found = {}
    for name, site in sites.items():
        model_site = model_trace.nodes.get(name)
        if model_site is None or not reparam_info(site["fn"]).kind.is_reparameterized:
            found[name] = False
            continue
        try:
            kl_divergence(site["fn"], model_site["fn"])
            found[name] = True
        except (NotImplementedError, RuntimeError, ValueError):
            found[name] = False
    return found


def _site_route(name, site, info, est, asked, size, baseline, k, use_kl, has_kl, linear):
    fn = site["fn"]
    kl = "closed form" if use_kl else "Monte Carlo"
    if est == "enumerate":
        why = f"{'requested' if asked else 'discrete'}: exact sum over {size} values, zero variance"
        vr, kl = "exact sum", "-"
    elif est == "score":
        options = site["infer"].get("baseline", {})
        vr = (
            "value"
            if "baseline_value" in options
            else "nn"
            if "nn_baseline" in options
            else baseline
        )
        reason = VARIANCE_REDUCTION[vr].format(k=k)
        if vr == "decaying" and k < 2:
            reason += " (leave-one-out needs >= 2 particles)"
        head = "requested" if asked else "no pathwise gradient"
        why = f"{head}; {reason}; Rao-Blackwellized by dependency"
    elif est == "relaxed":
        vr, why = "-", f"{info.note}; biased"
    elif linear is not None:
        vr, why = LINEAR_WHY[linear]
    else:
        vr, why = "-", info.note or "has rsample"
        if has_kl is False:
            why += "; KL has no closed form"
    family = info.family.split(".")[-1]
    return SiteRoute(
        name, family, tuple(fn.batch_shape), tuple(fn.event_shape), info.kind, est, vr, why, kl
    )


def _checked(plan, model, guide, args, kwargs, req: _Request) -> RoutingPlan:
    """Run the plan's ELBO once; replace an automatic choice that fails there by the next one
    (a note says so), raise when what failed was requested."""
    notes = []
    while True:
        try:
            with poutine.block(), torch.no_grad():
                plan.elbo().loss(model, guide, *args, **kwargs)
            plan.notes.extend(notes)
            return plan
        except RoutingError:
            raise
        except Exception as err:  # the trial run failed: was the failing choice automatic?
            reason = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]}"
            nxt, what = _next_choice(plan, req)
            if nxt is None:
                raise RoutingError(
                    f"route: the plan ({plan.describe_elbo()}) fails on these arguments "
                    f"({reason}). Change what you requested (num_particles=1 when the model "
                    "cannot be vectorized over particles, enumerate='never', "
                    "analytic_kl=False), or fix the model"
                ) from err
            notes.append(f"{what} failed ({reason})")
            req = nxt
            plan = _plan(model, guide, args, kwargs, req)


def _next_choice(plan: RoutingPlan, req: _Request):
    """The request with the failing automatic choice replaced, and what that choice was."""
    if plan.elbo_class == "TraceEnum_ELBO" and req.enumerate == "auto":
        return replace(req, enumerate="never"), "enumeration"
    if plan.num_particles > 1 and req.num_particles is None:
        return replace(req, num_particles=1), f"{plan.num_particles} vectorized particles"
    if plan.elbo_class == "TraceMeanField_ELBO" and req.analytic_kl == "auto":
        return replace(req, analytic_kl=False), "the closed-form KL"
    return None, ""
