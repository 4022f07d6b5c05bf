r"""DisARM (Dong, Mnih & Tucker 2020) for Bernoulli guide sites: antithetic pairs, one uniform.

For ``b ~ Bernoulli(\sigma(\alpha))`` (independent coordinates, logits ``\alpha``) draw one
``u ~ U(0, 1)`` per coordinate and the antithetic pair

.. math:: b = 1[u < \sigma(\alpha)],\qquad \tilde b = 1[1 - u < \sigma(\alpha)],

each marginally ``Bernoulli(\sigma(\alpha))``. With ``f`` the ELBO integrand
``\log p(x, \cdot) - \log q(\cdot)`` of a particle, the DisARM estimator of
``\nabla_{\alpha_i} E_q[f]`` is

.. math:: \hat g_i = \tfrac12\,\big(f(b) - f(\tilde b)\big)\,(-1)^{\tilde b_i}\,
          1[b_i \ne \tilde b_i]\,\sigma(|\alpha_i|),

unbiased (it is ARM's estimator with the antithetic noise integrated out: Rao-Blackwellized,
never of higher variance than ARM) and with a zero weight wherever the pair agrees. ``f``'s own
``\alpha``-dependence (through ``-\log q_\alpha(b)``) has expectation ``-E[\nabla \log q] = 0``
and is left out. Every Bernoulli coordinate of every such guide site shares the pair (the
particle's ``b`` and ``\tilde b`` flip together), which is the multivariate DisARM estimator for a
factorized ``q``.

The rest is Pyro's ELBO: the pair is two particles of the usual ELBO (vectorized, an outermost
plate of size ``2P`` for ``P`` pairs, pair ``k`` being particles ``k`` and ``k + P``), so
reparameterized sites get the pathwise gradient averaged over the ``2P`` particles (unbiased:
each particle is a draw from ``q``; their other randomness is independent, which keeps
``E[f(b, z) | b, \tilde b] = F(b)``). ``f`` is per datum when the model has an independent data
plate (as in :mod:`.vimco`), so a datum's Bernoulli coordinates get only that datum's signal.

**Categorical sites** (``Categorical`` or ``OneHotCategorical``, possibly ``Independent``; Dong,
Mnih & Tucker 2021, "Coupled gradient estimators for discrete latent variables"): a
``C``-category variable with logits ``\alpha`` is written by stick breaking as ``C - 1``
independent binary decisions ``d_k \sim Bernoulli(\sigma(\theta_k))``,

.. math:: \theta_k = \alpha_k - \log\sum_{j > k} e^{\alpha_j},\qquad
          z = \min\{k : d_k = 1\}\ (C - 1\ \text{when none}),

so that ``P(z = k) = \sigma(\theta_k)\prod_{j<k}(1 - \sigma(\theta_j)) = \mathrm{softmax}(
\alpha)_k``: ``z`` is a deterministic function of a factorized Bernoulli vector, and the
multivariate DisARM estimator above on the decisions, ``\hat g_{\theta_k}``, is unbiased for
``\nabla_\theta E[f]``; the chain rule through ``\theta(\alpha)`` (autograd on the
surrogate ``\sum_k \hat g_{\theta_k}\theta_k(\alpha)``) gives the logits' gradient. A decision
that neither member of the pair reaches (both stopped earlier) leaves ``f(b) - f(\tilde b)``
unchanged, and the DisARM weight averages to zero over its uniform: its term is dropped
(Rao-Blackwellized). The categories are taken in order of decreasing probability (per row;
the order depends on ``\alpha`` only, so the construction stays exact), so the first
decisions carry most of the mass.

Scope: non-reparameterized guide sites must be ``Bernoulli``, ``Categorical`` or
``OneHotCategorical`` (or ``Independent`` of them) whose logits are the same for both members
of a pair, i.e. do not depend on other latents drawn per particle (no such site downstream of a
sampled value); other cases raise.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger

from pyro_reparam.estimators.vimco import CoupledELBO


def _bernoulli(fn):
    """``(bernoulli, event_dims)`` when ``fn`` is a (possibly Independent) Bernoulli."""
    event = 0
    while isinstance(fn, dist.Independent):
        event += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    if isinstance(fn, dist.Bernoulli):
        return fn, event
    return None, 0


def _categorical(fn):
    """``(categorical, event_dims)`` when ``fn`` is a (possibly Independent) Categorical or
    OneHotCategorical; ``event_dims`` counts the Independent dims only."""
    event = 0
    while isinstance(fn, dist.Independent):
        event += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    if isinstance(fn, (dist.Categorical, dist.OneHotCategorical)):
        return fn, event
    return None, 0


def _order(logits: torch.Tensor) -> torch.Tensor:
    """The categories by decreasing probability (per row): the stick-breaking order."""
    return logits.detach().argsort(-1, descending=True)


def stick_breaking_logits(logits: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
    """``theta_k = alpha_k - logsumexp(alpha_{>k})`` for ``k < C - 1`` (categories taken in
    ``order``): the logits of the binary decisions "stop at the k-th category" of the
    stick-breaking construction."""
    if order is not None:
        logits = logits.gather(-1, order)
    tail = torch.logcumsumexp(logits.flip(-1), -1).flip(-1)  # logsumexp(alpha_{>=k})
    return logits[..., :-1] - tail[..., 1:]


def first_stop(decisions: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
    """The category of each row of stick-breaking decisions: the first ``k`` with ``d_k = 1``,
    ``C - 1`` when there is none (mapped through ``order`` when given)."""
    stop = torch.cat([decisions, torch.ones_like(decisions[..., :1])], -1)
    k = stop.to(torch.uint8).argmax(-1)
    return k if order is None else order.gather(-1, k.unsqueeze(-1)).squeeze(-1)


class _AntitheticPairs(Messenger):
    """Samples every Bernoulli guide site as antithetic pairs along the particle dim."""

    def __init__(self, nesting: int, pairs: int):
        super().__init__()
        self.nesting, self.pairs = nesting, pairs
        self.sites: dict[str, int] = {}  # site -> index of the particle dim in its value
        self.decisions: dict[str, tuple] = {}  # categorical site -> (d, d~) stick decisions

    def _pyro_sample(self, msg):
        if msg["is_observed"] or msg["done"] or msg["value"] is not None:
            return
        bern, event = _bernoulli(msg["fn"])
        cat, _ = _categorical(msg["fn"]) if bern is None else (None, 0)
        if bern is None and cat is None:
            return
        if cat is not None:
            event = _categorical(msg["fn"])[1] + 1
        logits = (bern if cat is None else cat).logits
        batch = logits.dim() - event
        if batch < self.nesting or logits.shape[batch - self.nesting] != 2 * self.pairs:
            raise ValueError(
                f"DisARM_ELBO: site {msg['name']!r} is not in the particle plate as expected"
            )
        pd = batch - self.nesting
        first = logits.narrow(pd, 0, self.pairs)
        if not torch.equal(logits.narrow(pd, self.pairs, self.pairs), first):
            raise NotImplementedError(
                f"DisARM_ELBO: the logits of site {msg['name']!r} differ between the two "
                "members of a pair (they depend on another latent drawn per particle); only "
                "Bernoulli sites whose logits do not depend on sampled values are supported"
            )
        with torch.no_grad():
            order = None if cat is None else _order(first)
            p = torch.sigmoid(first if cat is None else stick_breaking_logits(first, order))
            u = torch.rand_like(p)
            d, d_anti = u < p, 1 - u < p
            if cat is None:
                value = torch.cat([d, d_anti], pd).to(logits.dtype)
            else:
                self.decisions[msg["name"]] = (d, d_anti)
                value = torch.cat([first_stop(d, order), first_stop(d_anti, order)], pd)
                if isinstance(cat, dist.OneHotCategorical):
                    value = torch.nn.functional.one_hot(value, logits.shape[-1])
                    value = value.to(logits.dtype)
        msg["value"] = value
        msg["done"] = True
        self.sites[msg["name"]] = pd


class DisARM_ELBO(CoupledELBO):
    """The ELBO with DisARM gradients for the logits of Bernoulli guide sites.

    :param int num_pairs: ``P`` antithetic pairs per step (``2P`` vectorized particles).
    :param max_plate_nesting: the model's plate nesting, guessed when infinite.

    ``loss`` is the negative ELBO estimate, averaged over the ``2P`` particles.
    """

    families = "Bernoulli / Categorical / OneHotCategorical"

    def __init__(self, num_pairs: int = 1, max_plate_nesting: float | None = float("inf")):
        if isinstance(num_pairs, bool) or not isinstance(num_pairs, int) or num_pairs < 1:
            raise ValueError(
                f"{type(self).__name__}: num_pairs must be a positive integer, got {num_pairs!r}"
            )
        super().__init__(num_particles=2 * num_pairs, max_plate_nesting=max_plate_nesting)
        self.num_pairs = num_pairs

    def _draws(self) -> _AntitheticPairs:
        return _AntitheticPairs(-self.particle_dim, self.num_pairs)

    def _site_terms(self, coupled, pairs, f, run):
        return self._pair_terms(coupled.guide_trace, pairs, f, {})

    def _pair_terms(self, guide_trace, pairs, f, control: dict) -> torch.Tensor:
        """The surrogate terms, the learning signal ``f(b) - f(b~)`` of a Bernoulli site
        ``name`` lowered by ``control[name]`` (of the site's value shape, ``P`` pairs first)
        where given."""
        p, total = self.num_pairs, 0.0
        for name, pd in pairs.sites.items():
            site = guide_trace.nodes[name]
            if name in pairs.decisions:
                total = total + _categorical_term(site, pd, p, f, pairs.decisions[name])
                continue
            logits, b, b_anti, event = bernoulli_pair(site, pd, p)
            df = _align(f[:p] - f[p:], logits.dim() - event, event)
            if name in control:
                df = df - control[name]
            coef = 0.5 * df * pair_weight(logits, b, b_anti)
            total = total + (coef.detach() * logits).sum() / p
        return total


def bernoulli_pair(site, pd: int, p: int):
    """``(logits, b, b~, event_dims)`` of a Bernoulli site drawn as ``p`` antithetic pairs
    along dim ``pd`` of its value (the logits of the first members; both members share them)."""
    bern, event = _bernoulli(site["fn"])
    value = site["value"]
    return bern.logits.narrow(pd, 0, p), value.narrow(pd, 0, p), value.narrow(pd, p, p), event


def pair_weight(logits: torch.Tensor, b: torch.Tensor, b_anti: torch.Tensor) -> torch.Tensor:
    """DisARM's ``(-1)^{b~_i} 1[b_i != b~_i] sigma(|alpha_i|)``: it changes sign when ``u_i``
    becomes ``1 - u_i`` (``b_i`` and ``b~_i`` swap) and is otherwise unchanged."""
    return (1 - 2 * b_anti) * (b != b_anti) * torch.sigmoid(logits.abs())


def _categorical_term(site, pd, p, f, decisions):
    """The surrogate of a categorical site: DisARM on its stick-breaking decisions, chained
    through ``theta(alpha)``."""
    cat, event = _categorical(site["fn"])
    logits = cat.logits.narrow(pd, 0, p)
    theta = stick_breaking_logits(logits, _order(logits))
    d, d_anti = (t.to(theta.dtype) for t in decisions)
    k = torch.arange(theta.shape[-1], device=theta.device)
    reached = (k <= first_stop(d).unsqueeze(-1)) | (k <= first_stop(d_anti).unsqueeze(-1))
    df = _align(f[:p] - f[p:], theta.dim() - event - 1, event + 1)
    weight = (1 - 2 * d_anti) * (d != d_anti) * reached * torch.sigmoid(theta.abs())
    coef = 0.5 * df * weight
    return (coef.detach() * theta).sum() / p


def _align(f: torch.Tensor, batch_dims: int, event_dims: int) -> torch.Tensor:
    while f.dim() > batch_dims and f.shape[0] == 1:
        f = f.squeeze(0)
    return f.reshape(f.shape + (1,) * event_dims)
