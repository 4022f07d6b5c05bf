"""Routing: give every guide sample site the best gradient estimator, and say why.

``route(model, guide, *args)`` traces the guide once and assigns each latent site one of

* ``pathwise``: PATHWISE and IMPLICIT families (``z = g_phi(eps)``), low variance, unbiased;
* ``relaxed``: pathwise through a continuous relaxation (biased with respect to the discrete model);
* ``enumerate``: exact sum over a small finite support (``TraceEnum_ELBO``, parallel);
* ``score``: the score-function estimator, Rao-Blackwellized by dependency tracking and with a
  baseline (leave-one-out across particles, a running average, or a neural baseline).

``plan.elbo()`` then builds the Pyro ELBO that implements the plan, ready for ``pyro.infer.SVI``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import pyro.poutine as poutine
import torch
from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample

from pyro_reparam.distributions import ScoreFunction
from pyro_reparam.estimators import ScoreFunctionELBO
from pyro_reparam.families import Kind, reparam_info
from pyro_reparam.tables import format_table

ESTIMATORS = ("pathwise", "relaxed", "enumerate", "score")
DEFAULT_SCORE_PARTICLES = 4


@dataclass(frozen=True)
class SiteRoute:
    """The estimator chosen for one guide sample site, and the reason."""

    name: str
    family: str
    batch_shape: tuple
    event_shape: tuple
    kind: Kind
    estimator: str
    variance_reduction: str
    why: str

    @property
    def biased(self) -> bool:
        return self.estimator == "relaxed"


@dataclass
class RoutingPlan:
    """Per-site estimators for a (model, guide) pair; ``str(plan)`` is a readable table."""

    sites: dict[str, SiteRoute]
    num_particles: int
    baseline: str
    max_plate_nesting: int | None = None
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> SiteRoute:
        return self.sites[name]

    def sites_with(self, estimator: str) -> list[str]:
        return [n for n, s in self.sites.items() if s.estimator == estimator]

    @property
    def forced_score(self) -> list[str]:
        return [
            n for n, s in self.sites.items() if s.estimator == "score" and s.kind.is_reparameterized
        ]

    @property
    def elbo_name(self) -> str:
        if self.sites_with("enumerate"):
            return "TraceEnum_ELBO"
        if self.sites_with("score"):
            return "ScoreFunctionELBO"
        return "Trace_ELBO"

    def __str__(self) -> str:
        header = ("site", "family", "shape", "kind", "estimator", "variance reduction", "why")
        rows = [
            (
                s.name,
                s.family,
                _shape_str(s.batch_shape, s.event_shape),
                s.kind.value,
                s.estimator + (" (biased)" if s.biased else ""),
                s.variance_reduction,
                s.why,
            )
            for s in self.sites.values()
        ]
        particles = f"{self.num_particles} particle{'s' if self.num_particles > 1 else ''}"
        lines = [format_table(header, rows, rule=True), f"ELBO: {self.elbo_name}, {particles}"]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    __repr__ = __str__

    def elbo(
        self,
        num_particles: int | None = None,
        analytic_kl: bool = False,
        **kwargs,
    ) -> ELBO:
        """A configured Pyro ELBO that implements this plan.

        * every site pathwise: ``Trace_ELBO`` (``TraceMeanField_ELBO``, the closed-form KL where
          one exists, with ``analytic_kl=True``);
        * any site enumerated: ``TraceEnum_ELBO`` with those sites marked for parallel
          enumeration (non-enumerated score sites then use DiCE, without baselines);
        * otherwise any score-function site: :class:`~pyro_reparam.estimators.ScoreFunctionELBO`
          with the plan's baseline per site.

        Extra keyword arguments go to the ELBO's constructor.
        """
        k = num_particles or self.num_particles
        if self.max_plate_nesting is not None:
            kwargs.setdefault("max_plate_nesting", self.max_plate_nesting)
        if self.sites_with("enumerate"):
            inner = TraceEnum_ELBO(num_particles=k, vectorize_particles=k > 1, **kwargs)
        elif self.sites_with("score"):
            # Leave-one-out needs >= 2 particles: with one, fall back to the running average.
            def fit(vr):
                return "decaying" if k < 2 and vr == "loo" else vr

            site_baselines = {
                n: fit(self.sites[n].variance_reduction) for n in self.sites_with("score")
            }
            baseline = fit(self.baseline)
            inner = ScoreFunctionELBO(
                num_particles=k,
                baseline=baseline,
                site_baselines=site_baselines,
                vectorize_particles=k > 1,
                **kwargs,
            )
        elif analytic_kl:
            inner = TraceMeanField_ELBO(num_particles=k, vectorize_particles=k > 1, **kwargs)
        else:
            inner = Trace_ELBO(num_particles=k, vectorize_particles=k > 1, **kwargs)
        if self.sites_with("enumerate") or self.forced_score:
            return RoutedELBO(inner, self)
        return inner


def _shape_str(batch_shape, event_shape) -> str:
    b = "x".join(str(d) for d in batch_shape) or "-"
    return b + (" | " + "x".join(str(d) for d in event_shape) if event_shape else "")


class _ApplyRoute(Messenger):
    """Marks planned sites for enumeration and forces the score function where the plan says."""

    def __init__(self, enumerate_sites, score_sites):
        super().__init__()
        self.enumerate_sites = set(enumerate_sites)
        self.score_sites = set(score_sites)

    def _pyro_sample(self, msg):
        if msg["is_observed"]:
            return
        if msg["name"] in self.enumerate_sites:
            msg["infer"] = {**msg["infer"], "enumerate": "parallel"}
        elif msg["name"] in self.score_sites:
            msg["fn"] = ScoreFunction(msg["fn"])


class RoutedELBO(ELBO):
    """Runs a Pyro ELBO on the guide as the plan configures it (enumeration, forced score sites)."""

    def __init__(self, inner: ELBO, plan: RoutingPlan):
        super().__init__(
            num_particles=inner.num_particles,
            max_plate_nesting=inner.max_plate_nesting,
            vectorize_particles=inner.vectorize_particles,
        )
        self.inner = inner
        self.plan = plan
        self._apply = _ApplyRoute(plan.sites_with("enumerate"), plan.forced_score)

    def _configured(self, guide):
        return self._apply(guide)

    def _get_trace(self, model, guide, args, kwargs):
        return self.inner._get_trace(model, self._configured(guide), args, kwargs)

    def loss(self, model, guide, *args, **kwargs):
        return self.inner.loss(model, self._configured(guide), *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        return self.inner.loss_and_grads(model, self._configured(guide), *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        return self.inner.differentiable_loss(model, self._configured(guide), *args, **kwargs)


def _latent_sites(trace):
    for name, site in trace.nodes.items():
        if (
            site["type"] == "sample"
            and not site["is_observed"]
            and not isinstance(site["fn"], _Subsample)
        ):
            yield name, site


def _support_size(fn) -> int | None:
    try:
        return int(fn.enumerate_support(expand=False).shape[0])
    except (NotImplementedError, AttributeError, RuntimeError):
        return None


def route(
    model: Callable,
    guide: Callable,
    *args,
    estimators: Mapping[str, str] | None = None,
    num_particles: int | None = None,
    baseline: str = "auto",
    enumerate: str = "auto",
    max_enum_support: int = 16,
    check: bool = True,
    **kwargs,
) -> RoutingPlan:
    """Trace ``guide(*args, **kwargs)`` and choose an estimator for every latent site.

    :param estimators: per-site overrides, ``{"z": "score"|"enumerate"|"pathwise"|"relaxed"}``;
        a guide site's ``infer={"estimator": ...}`` does the same, and Pyro's
        ``infer={"enumerate": "parallel"}`` asks for enumeration.
    :param num_particles: particles per step; default 1 when every site is pathwise, else
        ``4`` (leave-one-out needs at least 2).
    :param baseline: ``"auto"`` (leave-one-out with >= 2 particles, else a running average),
        ``"loo"``, ``"decaying"``, ``"nn"`` (needs Pyro's ``nn_baseline`` infer keys) or ``"none"``.
    :param enumerate: ``"auto"`` enumerates score-function sites whose support has at most
        ``max_enum_support`` values, provided every score-function site can be; ``"never"``.
    :param check: run the chosen ELBO once on ``args`` and fall back (with a note) if it fails,
        e.g. a model that cannot be vectorized over particles.
    """
    estimators = dict(estimators or {})
    if enumerate not in ("auto", "never"):
        raise ValueError(f"route: enumerate must be 'auto' or 'never', got {enumerate!r}")
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    sites = dict(_latent_sites(guide_trace))
    unknown = set(estimators) - set(sites)
    if unknown:
        raise ValueError(
            f"route: estimators names site(s) {sorted(unknown)} that the guide does not sample; "
            f"the guide's latent sites are {sorted(sites)}"
        )
    infos = {name: reparam_info(site["fn"]) for name, site in sites.items()}
    requested = {
        name: estimators.get(name) or site["infer"].get("estimator") for name, site in sites.items()
    }
    for name, site in sites.items():
        if site["infer"].get("enumerate") and not requested[name]:
            requested[name] = "enumerate"
    for name, est in requested.items():
        if est is not None and est not in ESTIMATORS:
            raise ValueError(
                f"route: site {name!r} asks for estimator {est!r}; choose one of "
                + ", ".join(ESTIMATORS)
            )

    score_like = [n for n, i in infos.items() if i.kind is Kind.SCORE_FUNCTION]
    sizes = {n: _support_size(sites[n]["fn"]) if infos[n].enumerable else None for n in score_like}
    auto_enum = (
        enumerate == "auto"
        and bool(score_like)
        and all(
            (sizes[n] is not None and sizes[n] <= max_enum_support) or requested[n] == "score"
            for n in score_like
        )
    )
    any_score = any(
        (infos[n].kind is Kind.SCORE_FUNCTION and not auto_enum) or requested[n] == "score"
        for n in sites
    )
    k = num_particles or (DEFAULT_SCORE_PARTICLES if any_score else 1)
    chosen_baseline = ("loo" if k >= 2 else "decaying") if baseline == "auto" else baseline

    routes = {}
    for name, site in sites.items():
        info, fn = infos[name], site["fn"]
        est, vr, why = _choose(
            name, info, requested[name], auto_enum, sizes.get(name), chosen_baseline, k, site
        )
        routes[name] = SiteRoute(
            name,
            info.family.split(".")[-1],
            tuple(fn.batch_shape),
            tuple(fn.event_shape),
            info.kind,
            est,
            vr,
            why,
        )
    plan = RoutingPlan(routes, k, chosen_baseline)
    if check and any(s.estimator in ("score", "enumerate") for s in routes.values()):
        plan = _checked(plan, model, guide, args, kwargs)
    return plan


def _choose(name, info, requested, auto_enum, size, baseline, k, site):
    if requested == "enumerate":
        if not info.enumerable:
            raise ValueError(
                f"route: site {name!r} ({info.family}) has no enumerable support; use 'score'"
            )
        return "enumerate", "exact sum", "requested: exact expectation over the support"
    if requested == "pathwise" and not info.kind.is_reparameterized:
        raise ValueError(
            f"route: site {name!r} ({info.family}) is {info.kind.value}: it has no pathwise "
            "gradient. Use a reparameterizable or relaxed family in the guide, or 'score'"
        )
    if requested == "relaxed" and info.kind is not Kind.RELAXED:
        raise ValueError(
            f"route: site {name!r} ({info.family}) is not a relaxation; sample it from e.g. "
            "RelaxedBernoulliStraightThrough in the guide (AutoReparamGuide(discrete='relaxed'))"
        )
    if requested == "score" or (info.kind is Kind.SCORE_FUNCTION and not auto_enum):
        vr = "nn" if "nn_baseline" in site["infer"].get("baseline", {}) else baseline
        reason = {
            "loo": f"leave-one-out over {k} particles: per-datum baseline, no state",
            "decaying": "running-average baseline (one scalar per site)",
            "nn": "input-dependent neural baseline from the site's infer dict",
            "none": "bare score function (no baseline)",
        }[vr]
        head = "requested" if requested == "score" else "no pathwise gradient"
        return "score", vr, f"{head}; {reason}; Rao-Blackwellized by dependency"
    if info.kind is Kind.SCORE_FUNCTION:
        return "enumerate", "exact sum", f"discrete with {size} values: exact, zero variance"
    if info.kind is Kind.RELAXED:
        return "relaxed", "-", f"{info.note}; biased"
    declared = site["infer"].get("pyro_reparam", {})  # e.g. local reparameterization in a BNN
    return (
        "pathwise",
        declared.get("variance_reduction", "-"),
        declared.get("why", info.note or "has rsample"),
    )


def _checked(plan: RoutingPlan, model, guide, args, kwargs) -> RoutingPlan:
    """Run the plan's ELBO once; on failure fall back to a single-particle or score route."""
    try:
        with poutine.block(), torch.no_grad():
            elbo = plan.elbo()
            elbo.loss(model, guide, *args, **kwargs)
        plan.max_plate_nesting = elbo.max_plate_nesting
        return plan
    except Exception as err:  # any failure of the trial run triggers the fallback
        reason = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
    fixed = {}
    for name, s in plan.sites.items():
        if s.estimator == "enumerate":
            why = f"enumeration failed ({reason}); running-average baseline"
        elif s.estimator == "score" and s.variance_reduction == "loo":
            why = "running-average baseline (particles could not be vectorized)"
        else:
            fixed[name] = s
            continue
        fixed[name] = replace(s, estimator="score", variance_reduction="decaying", why=why)
    fallback = RoutingPlan(fixed, 1, "decaying", notes=[f"first choice failed: {reason}"])
    with poutine.block(), torch.no_grad():
        fallback.elbo().loss(model, guide, *args, **kwargs)
    return fallback


_CHECKED: set[tuple[int, int]] = set()


def check_elbo(model: Callable, guide: Callable, elbo: ELBO, *args, **kwargs) -> list[str]:
    """Warn (once per model/guide pair) when ``elbo`` would apply the bare score function.

    Pyro's ``Trace_ELBO`` (and its relatives) add ``E[f(z) grad log q(z)]`` with no baseline for
    every non-reparameterized guide site, silently. Returns the names of such sites.
    """
    if isinstance(elbo, (ScoreFunctionELBO, RoutedELBO, TraceEnum_ELBO)):
        return []
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    bare = []
    for name, site in _latent_sites(guide_trace):
        if reparam_info(site["fn"]).kind is not Kind.SCORE_FUNCTION:
            continue
        if isinstance(elbo, TraceGraph_ELBO) and site["infer"].get("baseline"):
            continue
        bare.append(name)
    key = (id(model), id(guide))
    if bare and key not in _CHECKED:
        _CHECKED.add(key)
        warnings.warn(
            f"{type(elbo).__name__} applies the bare score-function estimator (no baseline) to "
            f"site(s) {bare}: expect very noisy gradients. Use pyro_reparam.route(model, guide, "
            "*args).elbo() for baselines, leave-one-out or enumeration.",
            UserWarning,
            stacklevel=2,
        )
    return bare


__all__ = ["ESTIMATORS", "RoutedELBO", "RoutingPlan", "SiteRoute", "check_elbo", "route"]
