"""Score-function ELBO with the variance reduction that Pyro's ``TraceGraph_ELBO`` lacks.

For a non-reparameterized guide site ``z`` the gradient of the ELBO has the term

.. math:: E_q\\big[(c_z - b_z)\\, \\nabla_\\phi \\log q_\\phi(z)\\big],

where ``c_z`` is the *downstream cost* of ``z``: the ``log p`` and ``-log q`` terms that depend
on ``z``, found by provenance tracking (Rao-Blackwellization, as in ``TraceGraph_ELBO``), and
``b_z`` a baseline that does not depend on ``z`` (:mod:`pyro_reparam.estimators.baselines`).
The loss is the usual estimate ``-(log p - log q)`` averaged over particles; the surrogate,
whose gradient is the estimator, adds ``sum (c_z - b_z) score_z`` and the baselines' losses.

Shapes: ``c_z`` is summed to the site's plates, so it has the site's batch shape (with the
particle dimension outermost, at ``-max_plate_nesting``, when particles are vectorized).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import pyro
import torch
from pyro.distributions import TorchDistribution
from pyro.distributions.score_parts import ScoreParts
from pyro.distributions.util import is_identically_zero
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import MultiFrameTensor, is_validation_enabled, torch_item
from pyro.ops.provenance import (
    detach_provenance,
    extract_provenance,
    get_provenance,
    track_provenance,
)
from pyro.params import param_with_module_name
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from pyro.util import check_if_enumerated, warn_if_nan
from torch import nn

from pyro_reparam.estimators.baselines import (
    Baseline,
    NeuralBaseline,
    SiteOptions,
    check_beta,
    make_baseline,
)
from pyro_reparam.estimators.surrogate import SurrogateELBO
from pyro_reparam.families import Kind, reparam_kind

BASELINES = ("decaying", "loo", "nn", "none")
BASELINE_PARAM_PREFIX = "_pyro_reparam.baseline."
"""Where the ELBO registers the parameters of neural baselines it owns in the param store
(so that the SVI optimizer trains them)."""
_RESERVED = frozenset(dir(nn.ModuleDict()))


class _OwnSample(TorchDistribution):
    """``base`` handed back the very tensor it sampled, without the provenance wrapper, so that
    samplers which recognise their own draw by identity (``ShapeAugmentedGamma``) work; the
    log-density and score parts get the value's provenance back."""

    arg_constraints = {}

    def __init__(self, base: TorchDistribution):
        self.base = base
        self.has_rsample = base.has_rsample
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self):
        return self.base.support

    def log_prob(self, value, *args, **kwargs):
        raw, provenance = extract_provenance(value)
        return track_provenance(self.base.log_prob(raw, *args, **kwargs), provenance)

    def score_parts(self, value, *args, **kwargs):
        raw, provenance = extract_provenance(value)
        parts = self.base.score_parts(raw, *args, **kwargs)
        return ScoreParts(*(track_provenance(part, provenance) for part in parts))


class _TrackScoreSites(Messenger):
    """Tags values of score-function guide sites with their name (provenance), as Pyro's
    ``TrackNonReparam`` does, but using the registry so that partially reparameterized families
    (``Rejector``: ``rsample`` plus a score term of their own) are tracked too."""

    def _pyro_post_sample(self, msg):
        if (
            msg["type"] == "sample"
            and not isinstance(msg["fn"], _Subsample)
            and not msg["is_observed"]
            and reparam_kind(msg["fn"]) is Kind.SCORE_FUNCTION
        ):
            if getattr(msg["fn"], "has_rsample", False):
                msg["fn"] = _OwnSample(msg["fn"])
            msg["value"] = track_provenance(msg["value"], frozenset({msg["name"]}))


def downstream_costs(model_trace, guide_trace) -> dict[str, torch.Tensor]:
    """The downstream cost ``c_z`` of every tracked guide site ``z`` (detached).

    ``c_z`` sums the model's ``log p(s)`` and the guide's ``-log q(s)`` over the sites ``s``
    whose log-density has ``z`` in its provenance (``z`` itself and what depends on it, never
    what is upstream of or independent of ``z``), each summed over the plates that ``z`` is not
    in; its shape is ``z``'s batch shape (leading singleton dimensions dropped).
    """
    costs = defaultdict(MultiFrameTensor)
    for trace, negate in ((model_trace, False), (guide_trace, True)):
        for site in trace.nodes.values():
            if site["type"] != "sample":
                continue
            term = -site["log_prob"] if negate else site["log_prob"]
            for name in get_provenance(site["log_prob_sum"]):
                costs[name].add((site["cond_indep_stack"], term))
    return {
        name: detach_provenance(cost.sum_to(guide_trace.nodes[name]["cond_indep_stack"])).detach()
        for name, cost in costs.items()
    }


class ScoreFunctionELBO(SurrogateELBO):
    """ELBO whose score-function terms are Rao-Blackwellized and baselined per site.

    :param int num_particles: particles per step (a positive integer).
    :param str baseline: the default baseline of every score-function site, one of
        ``"decaying"`` (running average), ``"loo"`` (leave-one-out over vectorized particles),
        ``"nn"`` (the site's ``nn_baseline``), ``"none"``; ``"auto"``: ``"loo"`` with two or
        more vectorized particles, else ``"decaying"``. With one particle ``"loo"`` falls back
        to ``"decaying"`` (see :meth:`baseline_for` and :attr:`notes`).
    :param dict site_baselines: per-site choices, ``{"z": "none", ...}``.
    :param float baseline_beta: decay of the running averages, in ``[0, 1]``.

    A guide site's ``infer={"baseline": {...}}`` (Pyro's keys: ``nn_baseline`` with
    ``nn_baseline_input``, ``baseline_value``, ``use_decaying_avg_baseline``,
    ``baseline_beta``) wins over these defaults for that site.

    The baselines are modules made on the first step that meets their site and kept in
    :attr:`baselines`; :meth:`state_dict` / :meth:`load_state_dict` save and restore them (a
    state loaded before the first step is applied when each site's baseline is made). A neural
    baseline's parameters are registered in Pyro's param store (``pyro.param``) on every step,
    so the SVI optimizer trains them, unless the guide registered them itself
    (``pyro.module``); those the ELBO registered are saved in its state, the others with the
    param store. :attr:`notes` lists what the ELBO changed from what was asked.
    """

    def __init__(
        self,
        num_particles: int = 1,
        baseline: str = "auto",
        site_baselines: Mapping[str, str] | None = None,
        baseline_beta: float = 0.9,
        max_plate_nesting: float | None = float("inf"),
        vectorize_particles: bool | None = None,
        **kwargs,
    ):
        if (
            isinstance(num_particles, bool)
            or not isinstance(num_particles, int)
            or num_particles < 1
        ):
            raise ValueError(
                f"ScoreFunctionELBO: num_particles must be a positive integer, got "
                f"{num_particles!r}"
            )
        check_beta(baseline_beta, "ScoreFunctionELBO: baseline_beta")
        if vectorize_particles is None:
            vectorize_particles = num_particles > 1
        if baseline == "auto":
            baseline = "loo" if num_particles > 1 and vectorize_particles else "decaying"
        site_baselines = dict(site_baselines or {})
        for name, choice in [("baseline", baseline), *site_baselines.items()]:
            if choice not in BASELINES:
                raise ValueError(
                    f"ScoreFunctionELBO: {name}={choice!r} is not a baseline; "
                    f"choose one of {', '.join(BASELINES)}"
                )
        uses_loo = "loo" in (baseline, *site_baselines.values())
        if uses_loo and num_particles > 1 and not vectorize_particles:
            raise ValueError(
                "ScoreFunctionELBO: leave-one-out compares the particles of one datum with one "
                "another, so they must be drawn together (the same data, the same subsample): "
                "pass vectorize_particles=True, or choose baseline='decaying'"
            )
        self.notes: list[str] = []
        if uses_loo and num_particles == 1:
            baseline = "decaying" if baseline == "loo" else baseline
            site_baselines = {n: "decaying" if c == "loo" else c for n, c in site_baselines.items()}
            self.notes.append(
                "leave-one-out needs num_particles >= 2: the running average ('decaying') is "
                "used instead"
            )
        if max_plate_nesting is None:
            max_plate_nesting = float("inf")
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            **kwargs,
        )
        self.baseline = baseline
        self.site_baselines = site_baselines
        self.baseline_beta = float(baseline_beta)
        self.baselines = nn.ModuleDict()
        self._pending: dict[str, dict[str, torch.Tensor]] = {}
        self._external: dict[str, set[str]] = {}

    def _get_trace(self, model, guide, args, kwargs):
        with _TrackScoreSites():
            model_trace, guide_trace = get_importance_trace(
                "dense", self.max_plate_nesting, model, guide, args, kwargs
            )
        if is_validation_enabled():
            check_if_enumerated(guide_trace)
        return model_trace, guide_trace

    def loss(self, model, guide, *args, **kwargs) -> float:
        """An estimate of the negative ELBO (no gradients; baselines untouched)."""
        elbo = 0.0
        with torch.no_grad():
            for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
                particle = torch_item(model_trace.log_prob_sum()) - torch_item(
                    guide_trace.log_prob_sum()
                )
                elbo += particle / float(self.num_particles)
        loss = -elbo
        warn_if_nan(loss, "loss")
        return loss

    def _loss_and_surrogate_loss(self, model, guide, args, kwargs):
        elbo, surrogate = 0.0, 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            e, s = self._particle(model_trace, guide_trace)
            elbo, surrogate = elbo + e, surrogate + s
        return -elbo / self.num_particles, surrogate / self.num_particles

    def _particle(self, model_trace, guide_trace):
        elbo, surrogate_elbo = 0.0, 0.0
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                elbo = elbo + site["log_prob_sum"]
                surrogate_elbo = surrogate_elbo + site["log_prob_sum"]
        for site in guide_trace.nodes.values():
            if site["type"] == "sample":
                elbo = elbo - site["log_prob_sum"]
                entropy_term = site["score_parts"].entropy_term
                if not is_identically_zero(entropy_term):
                    surrogate_elbo = surrogate_elbo - entropy_term.sum()
        baseline_loss = 0.0
        for name, cost in downstream_costs(model_trace, guide_trace).items():
            site = guide_trace.nodes[name]
            score = site["score_parts"].score_function
            if is_identically_zero(score):
                continue
            cost = cost.expand(torch.broadcast_shapes(cost.shape, score.shape))
            options = SiteOptions.parse(name, site["infer"].get("baseline", {}))
            b, b_loss = self._baseline(name, options, cost)(cost, options)
            baseline_loss = baseline_loss + b_loss
            surrogate_elbo = surrogate_elbo + (score * (cost - b)).sum()
        surrogate_loss = -surrogate_elbo + baseline_loss
        return detach_provenance(elbo), detach_provenance(surrogate_loss)

    def _baseline(self, name: str, options: SiteOptions, cost: torch.Tensor) -> Baseline:
        """Site ``name``'s baseline, made (and given any loaded state) on its first step."""
        key = _module_key(name)
        if key not in self.baselines:
            vectorized = self.vectorize_particles and self.num_particles > 1
            particle_dim = -self.max_plate_nesting if vectorized else None
            kind = self.site_baselines.get(name, self.baseline)
            module = make_baseline(name, kind, options, cost, self.baseline_beta, particle_dim)
            self._external[key] = _external_params(name, module)
            if key in self._pending:
                _load(module, self._pending.pop(key), self._external[key])
            self.baselines[key] = module
        module = self.baselines[key]
        if isinstance(module, NeuralBaseline):
            _register(name, module)
        return module

    def baseline_for(self, name: str) -> str:
        """The kind of baseline site ``name`` uses (``"decaying"``, ``"loo"``, ``"nn"``,
        ``"value"``, ``"none"``): the one made on its first step, else the configured one."""
        key = _module_key(name)
        if key in self.baselines:
            return self.baselines[key].kind
        return self.site_baselines.get(name, self.baseline)

    def baseline_state(self) -> dict[str, float]:
        """The running-average baselines by site (for training histories)."""
        summaries = {m.site: m.summary() for m in self.baselines.values()}
        return {site: value for site, value in summaries.items() if value is not None}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every baseline's buffers and parameters (those the param store does not already
        hold), keyed ``<site>.<name>`` (a site's ``.`` written ``%2E``), plus any loaded state
        not yet applied. The tensors are the baselines' own (detached), not copies."""
        state = {}
        for key, module in self.baselines.items():
            external = self._external.get(key, set())
            for k, v in module.state_dict().items():
                if k not in external:
                    state[f"{key}.{k}"] = v
        for key, pending in self._pending.items():
            state.update({f"{key}.{k}": v for k, v in pending.items()})
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict` into the baselines in place; state of a site whose
        baseline is not made yet waits for its first step."""
        groups: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
        for k, v in state.items():
            key, dot, rest = k.partition(".")
            if not dot:
                raise ValueError(
                    f"ScoreFunctionELBO.load_state_dict: key {k!r} is not '<site>.<name>'; "
                    "pass what state_dict() returned"
                )
            groups[key][rest] = v
        for key, sub in groups.items():
            if key in self.baselines:
                _load(self.baselines[key], sub, self._external.get(key, set()))
            else:
                self._pending[key] = sub


def _module_key(site: str) -> str:
    """``site`` as a ``ModuleDict`` key, which may hold no ``.`` and no attribute name."""
    key = site.replace("%", "%25").replace(".", "%2E")
    return "%" + key if key in _RESERVED else key


def _own_param_name(site: str, param: str) -> str:
    return param_with_module_name(BASELINE_PARAM_PREFIX + site, param)


def _external_params(site: str, module: Baseline) -> set[str]:
    """State keys of the network parameters that the param store holds under another name
    (the guide registered them with ``pyro.module``): the param store saves those."""
    if not isinstance(module, NeuralBaseline):
        return set()
    store = pyro.get_param_store()
    external = set()
    for name, p in module.net.named_parameters():
        owner = store.param_name(p)
        if p.requires_grad and owner is not None and owner != _own_param_name(site, name):
            external.add(f"net.{name}")
    return external


def _register(site: str, module: NeuralBaseline) -> None:
    """Put the network's trainable parameters in this step's param trace (registering those the
    store does not hold yet), so that the SVI optimizer steps them, as for ``pyro.module``."""
    store = pyro.get_param_store()
    for name, p in module.net.named_parameters():
        if not p.requires_grad:
            continue
        owner = store.param_name(p)
        if owner is None:
            owner = _own_param_name(site, name)
            if owner in store:  # a stale tensor of an earlier network under this name
                del store[owner]
            store[owner] = p
        pyro.param(owner)


def _load(module: Baseline, state: Mapping[str, torch.Tensor], external: set[str]) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = sorted(set(missing) - external)
    if missing or unexpected:
        raise ValueError(
            f"site {module.site!r}: the saved baseline state does not fit its {module.kind!r} "
            f"baseline (missing {missing}, unexpected {sorted(unexpected)}); was it saved with "
            "another baseline for this site?"
        )
