"""Score-function ELBO with variance reduction that Pyro's ``TraceGraph_ELBO`` lacks.

For a non-reparameterized guide site ``z`` the gradient of the ELBO has the term

.. math:: E_q\\big[(c_z - b_z)\\, \\nabla_\\phi \\log q_\\phi(z)\\big],

where ``c_z`` is the *downstream cost* of ``z`` (the log p - log q terms that depend on ``z``,
found by provenance tracking: Rao-Blackwellization) and ``b_z`` is a baseline that does not
depend on ``z``, so subtracting it leaves the gradient unbiased. Baselines:

* ``"decaying"``: a running average of the mean downstream cost per datum (one scalar per site),
  ``b <- beta b + (1 - beta) mean(c)``. Unlike Pyro's, it keeps no per-batch-position state, so a
  smaller last minibatch or shuffled batches neither crash nor mislead it.
* ``"loo"`` (leave-one-out, VIMCO/RLOO style): with ``K`` vectorized particles, particle ``k``'s
  baseline is the mean cost of the other ``K - 1`` particles *for the same datum*:
  ``b_k = (sum_j c_j - c_k) / (K - 1)``. Per-datum, stateless and unbiased.
* ``"nn"``: an input-dependent baseline, Pyro's convention
  ``infer={"baseline": {"nn_baseline": net, "nn_baseline_input": x}}`` on the guide site, trained
  by the extra loss ``(c - b)^2``.
* ``"none"``: the bare score function (for comparisons).

A guide site's ``infer={"baseline": {"baseline_value": b}}`` (Pyro's key) supplies a fixed baseline.

Shapes: ``c`` is summed to the site's plates, so it has the site's batch shape (with the particle
dimension outermost, at ``-max_plate_nesting``, when particles are vectorized).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import pyro
import torch
from pyro.distributions.util import is_identically_zero
from pyro.infer import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import MultiFrameTensor, is_validation_enabled, torch_item
from pyro.ops.provenance import detach_provenance, get_provenance, track_provenance
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from pyro.util import check_if_enumerated, warn_if_nan

from pyro_reparam.families import Kind, reparam_kind

BASELINES = ("decaying", "loo", "nn", "none")
_STATE_PREFIX = "_pyro_reparam.baseline."


class _TrackScoreSites(Messenger):
    """Tags values of score-function guide sites with their name (provenance), as Pyro's
    ``TrackNonReparam`` does, but using the registry so that partially reparameterized families
    (which add a score term despite ``has_rsample``) are tracked too."""

    def _pyro_post_sample(self, msg):
        if (
            msg["type"] == "sample"
            and not isinstance(msg["fn"], _Subsample)
            and not msg["is_observed"]
            and reparam_kind(msg["fn"]) is Kind.SCORE_FUNCTION
        ):
            msg["value"] = track_provenance(msg["value"], frozenset({msg["name"]}))


class ScoreFunctionELBO(ELBO):
    """ELBO whose score-function terms are Rao-Blackwellized and baselined per site.

    :param int num_particles: particles per step. With ``baseline="loo"`` they are vectorized and
        need at least 2.
    :param str baseline: default baseline for every score-function site, one of
        ``"decaying"``, ``"loo"``, ``"nn"``, ``"none"``; ``"auto"`` picks ``"loo"`` when
        ``num_particles >= 2``, else ``"decaying"``.
    :param dict site_baselines: per-site overrides, ``{"z": "none", ...}``.
    :param float baseline_beta: decay of the running average (``"decaying"``).

    The running averages live in Pyro's param store under ``_pyro_reparam.baseline.<site>``, so
    checkpoints of the param store carry them and a resumed run continues exactly.
    """

    def __init__(
        self,
        num_particles: int = 1,
        baseline: str = "auto",
        site_baselines: Mapping[str, str] | None = None,
        baseline_beta: float = 0.9,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool | None = None,
        **kwargs,
    ):
        if baseline == "auto":
            baseline = "loo" if num_particles >= 2 else "decaying"
        for name, choice in [("baseline", baseline), *(site_baselines or {}).items()]:
            if choice not in BASELINES:
                raise ValueError(
                    f"ScoreFunctionELBO: {name}={choice!r} is not a baseline; "
                    f"choose one of {', '.join(BASELINES)}"
                )
        uses_loo = baseline == "loo" or "loo" in (site_baselines or {}).values()
        if uses_loo and num_particles < 2:
            raise ValueError(
                "ScoreFunctionELBO: the leave-one-out baseline needs num_particles >= 2 "
                f"(got {num_particles}); use baseline='decaying' for a single particle"
            )
        if not 0.0 <= baseline_beta < 1.0:
            raise ValueError(
                f"ScoreFunctionELBO: baseline_beta must be in [0, 1), got {baseline_beta}"
            )
        if vectorize_particles is None:
            vectorize_particles = num_particles > 1
        if uses_loo and not vectorize_particles:
            raise ValueError(
                "ScoreFunctionELBO: leave-one-out needs vectorize_particles=True so that every "
                "particle sees the same data (and the same subsample)"
            )
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            **kwargs,
        )
        self.baseline = baseline
        self.site_baselines = dict(site_baselines or {})
        self.baseline_beta = baseline_beta

    def _get_trace(self, model, guide, args, kwargs):
        with _TrackScoreSites():
            model_trace, guide_trace = get_importance_trace(
                "dense", self.max_plate_nesting, model, guide, args, kwargs
            )
        if is_validation_enabled():
            check_if_enumerated(guide_trace)
        return model_trace, guide_trace

    def loss(self, model, guide, *args, **kwargs) -> float:
        """An estimate of the negative ELBO (no gradients)."""
        with torch.no_grad():
            elbo = 0.0
            for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
                elbo += torch_item(model_trace.log_prob_sum()) - torch_item(
                    guide_trace.log_prob_sum()
                )
        loss = -elbo / self.num_particles
        warn_if_nan(loss, "loss")
        return loss

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Estimate the negative ELBO and backpropagate its surrogate."""
        loss, surrogate = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        surrogate.backward(retain_graph=self.retain_graph)
        loss = torch_item(loss)
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The surrogate loss: its value is not the ELBO, but its gradient is the estimator."""
        return self.loss_and_surrogate_loss(model, guide, *args, **kwargs)[1]

    def loss_and_surrogate_loss(self, model, guide, *args, **kwargs):
        """(negative ELBO estimate, surrogate loss whose gradient is the estimator)."""
        elbo, surrogate = 0.0, 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            e, s = self._particle(model_trace, guide_trace)
            elbo, surrogate = elbo + e, surrogate + s
        return -elbo / self.num_particles, surrogate / self.num_particles

    def _particle(self, model_trace, guide_trace):
        elbo, surrogate_elbo = 0.0, 0.0
        downstream = defaultdict(MultiFrameTensor)
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                elbo = elbo + site["log_prob_sum"]
                surrogate_elbo = surrogate_elbo + site["log_prob_sum"]
                for key in get_provenance(site["log_prob_sum"]):
                    downstream[key].add((site["cond_indep_stack"], site["log_prob"]))
        for site in guide_trace.nodes.values():
            if site["type"] == "sample":
                elbo = elbo - site["log_prob_sum"]
                entropy_term = site["score_parts"].entropy_term
                if not is_identically_zero(entropy_term):
                    surrogate_elbo = surrogate_elbo - entropy_term.sum()
                for key in get_provenance(site["log_prob_sum"]):
                    downstream[key].add((site["cond_indep_stack"], -site["log_prob"]))

        baseline_loss = 0.0
        for name, cost in downstream.items():
            site = guide_trace.nodes[name]
            score = site["score_parts"].score_function
            if is_identically_zero(score):
                continue
            cost = detach_provenance(cost.sum_to(site["cond_indep_stack"])).detach()
            cost = cost.expand(score.shape)
            b, b_loss = self._baseline(name, site, cost)
            baseline_loss = baseline_loss + b_loss
            surrogate_elbo = surrogate_elbo + (score * (cost - b)).sum()
        surrogate_loss = -surrogate_elbo + baseline_loss
        return detach_provenance(elbo), detach_provenance(surrogate_loss)

    def baseline_for(self, name: str) -> str:
        """The baseline used at site ``name``."""
        return self.site_baselines.get(name, self.baseline)

    def _baseline(self, name, site, cost):
        kind = self.baseline_for(name)
        options = site["infer"].get("baseline", {})
        if "nn_baseline" in options or kind == "nn":
            return self._nn_baseline(name, options, cost)
        if "baseline_value" in options:
            value = torch.as_tensor(options["baseline_value"], dtype=cost.dtype, device=cost.device)
            return value.detach(), 0.0
        if kind == "none":
            return 0.0, 0.0
        if kind == "loo":
            k = self.num_particles
            dim = -self.max_plate_nesting  # the vectorized-particle plate (Pyro counts it in)
            if cost.dim() < -dim:
                raise ValueError(
                    f"site {name!r}: leave-one-out needs the particle dimension at {dim}; the "
                    f"site's cost has shape {tuple(cost.shape)}"
                )
            return (cost.sum(dim, keepdim=True) - cost) / (k - 1), 0.0
        return self._decaying(name, cost), 0.0

    def _decaying(self, name, cost):
        """The running average from *earlier* steps (independent of this sample: unbiased)."""
        store = pyro.get_param_store()
        key = _STATE_PREFIX + name
        mean_cost = cost.mean()
        if key not in store:
            store[key] = mean_cost.detach()
            return torch.zeros((), dtype=cost.dtype, device=cost.device)
        old = store[key].detach()
        store[key] = self.baseline_beta * old + (1 - self.baseline_beta) * mean_cost
        return old

    def _nn_baseline(self, name, options, cost):
        net = options.get("nn_baseline")
        x = options.get("nn_baseline_input")
        if net is None or x is None:
            raise ValueError(
                f"site {name!r}: baseline 'nn' needs the guide site to carry "
                'infer={"baseline": {"nn_baseline": net, "nn_baseline_input": x}}'
            )
        pyro.module(_STATE_PREFIX + name + ".net", net)
        b = net(x.detach())
        if b.shape != cost.shape:
            try:
                b = b.reshape(cost.shape) if b.numel() == cost.numel() else b.expand(cost.shape)
            except RuntimeError:
                raise ValueError(
                    f"site {name!r}: nn_baseline returned shape {tuple(b.shape)}, expected the "
                    f"site's downstream-cost shape {tuple(cost.shape)}"
                ) from None
        return b.detach(), (cost - b).pow(2).sum()

    def baseline_state(self) -> dict[str, float]:
        """Current running-average baselines, by site (for training histories)."""
        store = pyro.get_param_store()
        return {
            k[len(_STATE_PREFIX) :]: v.item()
            for k, v in store.items()
            if k.startswith(_STATE_PREFIX) and v.dim() == 0
        }
