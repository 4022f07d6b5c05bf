r"""VIMCO (Mnih & Rezende 2016): the importance-weighted bound with leave-one-out learning signals.

With ``K`` particles ``z_1..z_K ~ q`` and weights ``w_k = p(x, z_k) / q(z_k)`` the
importance-weighted (IWAE) bound is

.. math:: \mathcal L = E_q\Big[\hat L\Big],\qquad \hat L = \log \frac1K \sum_k w_k .

Its gradient (``\tilde w_k = w_k / \sum_j w_j``) is

.. math:: \nabla \mathcal L = E\Big[\sum_k \tilde w_k \nabla \log w_k
          + \sum_k \hat L\, \nabla \log q(z_k)\Big],

the first sum pathwise (through reparameterized values and every parameter that ``log w_k``
depends on directly, including ``-log q`` of non-reparameterized sites), the second the score
term of the non-reparameterized guide sites. VIMCO replaces ``\hat L`` in the score term of
particle ``k`` by the learning signal

.. math:: \hat L - \hat L_{-k},\qquad
          \hat L_{-k} = \log \frac1K\Big(\sum_{j \ne k} w_j + \hat w_{-k}\Big),\qquad
          \hat w_{-k} = \exp\Big(\frac{1}{K-1}\sum_{j\ne k} \log w_j\Big),

``\hat L_{-k}`` does not depend on ``z_k``, so ``E[\hat L_{-k} \nabla \log q(z_k)] = 0``: the
estimator stays unbiased for the gradient of the IWAE bound. Reparameterized sites get the
pathwise gradient of the bound (the first sum), as in ``RenyiELBO(alpha=0)``.

**Per datum.** When the model's sites share a plate (a data plate), ``log w`` is kept per
position of the plates that *every* site is in, summing the others
(:func:`pyro.infer.util.get_dependent_plate_dims`, as ``RenyiELBO`` does), and the bound, the
weights and the learning signals are per datum; with a global latent the whole trace is one
"datum". When every site has the same ``scale`` (a minibatch scaled by ``N / B``), the
log-mean-exp is taken of the *unscaled* weights and the bound multiplied by the scale
afterwards (``RenyiELBO`` takes it of the scaled ones); with sites of different scales the
scaled ones are used, as in Pyro.

Particles are always vectorized: an outermost plate of size ``K`` at dim
``-(max_plate_nesting + 1)``.

This module also holds the importance-trace machinery that :mod:`.dreg`, :mod:`.stl` and
:mod:`.disarm` share: :func:`importance_traces` (Pyro's ``get_importance_trace`` with a handler
around the guide or the model run, and the unpruned guide trace kept) and
:func:`direct_log_probs` (``log q_phi(stop z)``: the guide run again on its own detached
values, whose gradient is the "direct" ``\partial_\phi \log q_\phi(z)|_z``, hierarchical guides
included).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import is_identically_zero
from pyro.infer.util import (
    get_dependent_plate_dims,
    is_validation_enabled,
    torch_item,
)
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_if_enumerated, check_model_guide_match, check_site_shape, warn_if_nan

from pyro_reparam.estimators.surrogate import SurrogateELBO

PARTICLE_PLATE = "num_particles_vectorized"


def importance_traces(
    model, guide, args, kwargs, max_plate_nesting, *, guide_handler=None, model_handler=None
):
    """Run ``guide``, then ``model`` replayed against it, as Pyro's ``get_importance_trace``
    (flat graphs, log-densities and score parts computed, shapes checked).

    ``guide_handler`` / ``model_handler`` (messengers) are active *outside* the trace of that
    run, so that a value they set in ``_pyro_sample`` / ``_pyro_post_sample`` is the one the
    trace records. Returns ``(model_trace, guide_trace, raw_guide_trace)``, the last with its
    subsample sites (for replaying the guide).
    """
    with guide_handler or _Nothing():
        raw_guide_trace = poutine.trace(guide, graph_type="flat").get_trace(*args, **kwargs)
    with model_handler or _Nothing():
        model_trace = poutine.trace(
            poutine.replay(model, trace=raw_guide_trace), graph_type="flat"
        ).get_trace(*args, **kwargs)
    if is_validation_enabled():
        check_model_guide_match(model_trace, raw_guide_trace, max_plate_nesting)
    guide_trace = prune_subsample_sites(raw_guide_trace)
    model_trace = prune_subsample_sites(model_trace)
    model_trace.compute_log_prob()
    guide_trace.compute_score_parts()
    if is_validation_enabled():
        for trace in (model_trace, guide_trace):
            for site in trace.nodes.values():
                if site["type"] == "sample":
                    check_site_shape(site, max_plate_nesting)
        check_if_enumerated(guide_trace)
    return model_trace, guide_trace, raw_guide_trace


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _ReplayDetached(Messenger):
    """Replay every sample site of ``trace`` (subsample sites included) with its value
    detached."""

    def __init__(self, trace):
        super().__init__()
        self.trace = trace

    def _pyro_sample(self, msg):
        name = msg["name"]
        if name in self.trace and not msg["is_observed"]:
            site = self.trace.nodes[name]
            value = site["value"]
            msg["value"] = value.detach() if torch.is_tensor(value) else value
            msg["done"] = True
            msg["infer"] = site["infer"]


def direct_log_probs(guide, raw_guide_trace, args, kwargs) -> dict[str, torch.Tensor]:
    """``log q_phi(stop z)`` of every guide sample site (scaled and masked as in the trace).

    The guide runs again with every value replayed detached, so the gradient of the result is
    only the *direct* dependence on the parameters at fixed values,
    ``\\partial_\\phi \\log q_\\phi(z)|_z``, also through upstream values (for
    ``q(z_2 | z_1)`` the parameters are computed from ``stop z_1``). ``log q(z(phi); phi) -
    direct`` then has exactly the pathwise gradient ``\\partial_z \\log q \\cdot dz/d\\phi``.
    """
    with poutine.block(hide_types=["param"]):
        trace = poutine.trace(_ReplayDetached(raw_guide_trace)(guide)).get_trace(*args, **kwargs)
    trace = prune_subsample_sites(trace)
    trace.compute_log_prob()
    return {
        name: site["log_prob"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"]
    }


def is_score_site(site) -> bool:
    return not is_identically_zero(site["score_parts"].score_function)


class Coupled(NamedTuple):
    """What :meth:`ImportanceWeightedELBO._coupled` returns: the pruned and the raw guide trace
    (the raw one keeps the subsample sites), the per-datum log-weights ``log_w`` (particles at
    dim 0), the dependent plate dims that were summed into a datum, and the sites' common
    scale (``None`` when they differ)."""

    guide_trace: object
    raw_guide_trace: object
    log_w: torch.Tensor
    sum_dims: tuple
    scale: float | None

    @property
    def common_scale(self) -> float:
        return 1.0 if self.scale is None else self.scale


class ImportanceWeightedELBO(SurrogateELBO):
    """Base of the importance-weighted ELBOs: vectorized particles, per-datum log-weights.

    Subclasses implement :meth:`_surrogate` (the surrogate ELBO, summed, whose gradient is the
    estimator). ``loss`` returns the negative IWAE bound estimate ``-sum_datum log mean_k w_k``.
    """

    min_particles = 1

    def __init__(
        self,
        num_particles: int = 2,
        max_plate_nesting: float | None = float("inf"),
        **kwargs,
    ):
        name = type(self).__name__
        if (
            isinstance(num_particles, bool)
            or not isinstance(num_particles, int)
            or num_particles < self.min_particles
        ):
            raise ValueError(
                f"{name}: num_particles must be an integer >= {self.min_particles}, got "
                f"{num_particles!r}"
            )
        if kwargs.pop("vectorize_particles", True) is not True:
            raise ValueError(f"{name}: the particles are always vectorized")
        if max_plate_nesting is None:
            max_plate_nesting = float("inf")
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=False,  # ours: a particle plate even for K = 1
            **kwargs,
        )
        self.notes: list[str] = []

    # -- traces -----------------------------------------------------------------------------
    @property
    def particle_dim(self) -> int:
        return -(int(self.max_plate_nesting) + 1)

    def _wrap(self, fn):
        return pyro.plate(PARTICLE_PLATE, self.num_particles, dim=self.particle_dim)(fn)

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace, _ = self._traces(model, guide, args, kwargs)
        return model_trace, guide_trace

    def _traces(self, model, guide, args, kwargs, **handlers):
        """``(model_trace, guide_trace, raw_guide_trace, wrapped_guide)`` with the particle
        plate outermost."""
        if self.max_plate_nesting == float("inf"):
            self._guess_max_plate_nesting(model, guide, args, kwargs)
        wrapped_guide = self._wrap(guide)
        traces = importance_traces(
            self._wrap(model),
            wrapped_guide,
            args,
            kwargs,
            int(self.max_plate_nesting) + 1,
            **handlers,
        )
        return (*traces, wrapped_guide)

    def _coupled(self, model, guide, args, kwargs, draws, families: str) -> Coupled:
        """The traces under the coupling handler ``draws`` (``draws.sites``: the guide sites it
        samples), refusing any other score-function site, and the per-datum log-weights with
        those sites' guide log-densities detached (their logits' gradient is the coupled
        estimator's alone); see :class:`Coupled`."""
        model_trace, guide_trace, raw_guide_trace, _ = self._traces(
            model, guide, args, kwargs, guide_handler=draws
        )
        sum_dims, scale = self._datum_terms(model_trace, guide_trace)
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and is_score_site(site) and name not in draws.sites:
                raise ValueError(
                    f"{type(self).__name__}: guide site {name!r} ({type(site['fn']).__name__}) "
                    f"is neither reparameterized nor {families}"
                )
        log_w = 0.0
        for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
            for name, site in trace.nodes.items():
                if site["type"] == "sample":
                    lp = site["log_prob"]
                    if sign < 0 and name in draws.sites:
                        lp = lp.detach()
                    log_w = log_w + sign * self._per_datum(lp, sum_dims, scale)
        return Coupled(guide_trace, raw_guide_trace, log_w, sum_dims, scale)

    # -- per-datum sums ---------------------------------------------------------------------
    def _datum_terms(self, model_trace, guide_trace):
        """``(sum_dims, scale)``: the dependent plate dims to sum, and the common scale of all
        sites (``None`` when they differ or are tensors)."""
        sites = [
            s for t in (model_trace, guide_trace) for s in t.nodes.values() if s["type"] == "sample"
        ]
        sum_dims = get_dependent_plate_dims(sites)
        scales = {s["scale"] if not torch.is_tensor(s["scale"]) else object() for s in sites}
        scale = next(iter(scales)) if len(scales) == 1 else None
        if scale is not None and not isinstance(scale, (int, float)):
            scale = None
        if scale == 0:
            scale = None
        return sum_dims, scale

    def _per_datum(self, tensor, sum_dims, scale):
        """A site term with the particle dim at 0 and every plate dim (dependent ones summed,
        kept as size 1), divided by the common scale."""
        nesting = -self.particle_dim
        if not torch.is_tensor(tensor):
            tensor = torch.as_tensor(tensor)
        while tensor.dim() < nesting:
            tensor = tensor.unsqueeze(0)
        dims = [d for d in sum_dims if -tensor.dim() <= d]
        if dims:
            tensor = tensor.sum(dims, keepdim=True)
        if scale is not None and scale != 1:
            tensor = tensor / scale
        return tensor

    def _log_weights(self, model_trace, guide_trace, sum_dims, scale, detach=False):
        log_w = 0.0
        for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
            for site in trace.nodes.values():
                if site["type"] == "sample":
                    lp = site["log_prob"].detach() if detach else site["log_prob"]
                    log_w = log_w + sign * self._per_datum(lp, sum_dims, scale)
        return log_w

    def _bound(self, log_w, scale):
        bound = (torch.logsumexp(log_w, 0) - math.log(self.num_particles)).sum()
        return bound * (1.0 if scale is None else scale)

    # -- Pyro's ELBO interface --------------------------------------------------------------
    def loss(self, model, guide, *args, **kwargs) -> float:
        """The negative IWAE bound estimate ``-sum_datum log (1/K) sum_k w_k`` (no grads)."""
        with torch.no_grad():
            model_trace, guide_trace, _, _ = self._traces(model, guide, args, kwargs)
            sum_dims, scale = self._datum_terms(model_trace, guide_trace)
            log_w = self._log_weights(model_trace, guide_trace, sum_dims, scale, detach=True)
            loss = -torch_item(self._bound(log_w, scale))
        warn_if_nan(loss, "loss")
        return loss

    def _loss_and_surrogate_loss(self, model, guide, args, kwargs):
        return self._estimate(model, guide, args, kwargs)

    def _estimate(self, model, guide, args, kwargs):
        raise NotImplementedError


class CoupledELBO(ImportanceWeightedELBO):
    """Base of the ELBOs whose ``K`` particles are coupled draws of the score-function sites
    (DisARM's antithetic pairs, ARMS's copula): ``loss`` is the negative ELBO averaged over the
    particles, ``-(1/K) sum_k f_k`` summed over the data (not the IWAE bound), and the surrogate
    is ``(1/K) sum_k log w_k`` (pathwise terms, the coupled sites' ``log q`` detached) plus
    each coupled site's term, ``sum coef * logits`` with ``coef`` stopped.

    Subclasses give :attr:`families` (for the refusal of other sites), :meth:`_draws` (the
    sampling handler) and :meth:`_site_terms`."""

    families = ""

    def _guess_max_plate_nesting(self, model, guide, args, kwargs):
        """Pyro's guess (one run of the model and guide), on a copy of the random streams: the
        first step then draws what it would have drawn with the nesting given, so a resumed
        run, whose fresh ELBO guesses again, sees the draws of the uninterrupted one. (No Pyro
        ELBO draws these coupled particles, so no draw-for-draw match is lost.)"""
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else []):
            super()._guess_max_plate_nesting(model, guide, args, kwargs)

    def _draws(self) -> Messenger:
        """A fresh handler that samples the coupled sites (its ``sites``: name -> particle
        dim of the value)."""
        raise NotImplementedError

    def _site_terms(self, coupled: Coupled, draws, f: torch.Tensor, run: tuple) -> torch.Tensor:
        """The coupled sites' surrogate terms given the detached log-weights ``f`` (K first);
        ``run`` is ``(model, guide, args, kwargs)``, for estimators that evaluate the model
        again."""
        raise NotImplementedError

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            loss, _ = self._estimate(model, guide, args, kwargs, surrogate=False)
        return loss.item()

    def _estimate(self, model, guide, args, kwargs, surrogate=True):
        if self.max_plate_nesting == float("inf"):
            self._guess_max_plate_nesting(model, guide, args, kwargs)
        draws = self._draws()
        coupled = self._coupled(model, guide, args, kwargs, draws, self.families)
        f = coupled.log_w.detach()
        scale = coupled.common_scale
        elbo = f.mean(0).sum() * scale
        if not surrogate:
            return -elbo, None
        terms = self._site_terms(coupled, draws, f, (model, guide, args, kwargs))
        total = coupled.log_w.mean(0).sum() + terms
        return -elbo, -total * scale


class VIMCO_ELBO(ImportanceWeightedELBO):
    """The IWAE bound with VIMCO's leave-one-out control variates (see the module docstring).

    :param int num_particles: ``K >= 2`` vectorized particles.
    :param max_plate_nesting: the model's plate nesting, guessed when infinite.

    ``loss`` is the negative bound estimate; the surrogate's gradient is
    ``sum_datum [sum_k w~_k grad log w_k + sum_k (L - L_{-k}) grad log q(z_k)]`` (the second sum
    over non-reparameterized guide sites only), divided by nothing: it estimates the gradient of
    the bound, not of its mean per particle.
    """

    min_particles = 2

    def _estimate(self, model, guide, args, kwargs):
        model_trace, guide_trace, _, _ = self._traces(model, guide, args, kwargs)
        sum_dims, scale = self._datum_terms(model_trace, guide_trace)
        log_w = self._log_weights(model_trace, guide_trace, sum_dims, scale)
        lw = log_w.detach()
        bound = self._bound(lw, scale)
        weights = torch.softmax(lw, 0)
        surrogate = (weights * log_w).sum()
        score = 0.0
        for site in guide_trace.nodes.values():
            if site["type"] == "sample" and is_score_site(site):
                term = site["score_parts"].score_function
                score = score + self._per_datum(term, sum_dims, scale)
        if torch.is_tensor(score):
            signal = vimco_signals(lw)
            surrogate = surrogate + (signal * score).sum()
        if scale is not None:
            surrogate = surrogate * scale
        return -bound, -surrogate


def vimco_signals(log_w: torch.Tensor) -> torch.Tensor:
    """``L - L_{-k}`` for each particle ``k`` (dim 0 of ``log_w``), per datum, detached.

    ``L_{-k}`` replaces ``log w_k`` by the mean of the other log-weights (the log of their
    geometric mean) in ``log (1/K) sum_j w_j``.
    """
    lw = log_w.detach()
    k = lw.shape[0]
    total = torch.logsumexp(lw, 0, keepdim=True)
    others = (lw.sum(0, keepdim=True) - lw) / (k - 1)
    # m[k, j] = lw[j] for j != k, others[k] for j == k
    eye = torch.eye(k, dtype=torch.bool, device=lw.device).reshape((k, k) + (1,) * (lw.dim() - 1))
    m = torch.where(eye, others.unsqueeze(1), lw.unsqueeze(0))
    loo = torch.logsumexp(m, 1)
    return total - loo
