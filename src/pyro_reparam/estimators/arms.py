r"""ARMS (Dimitriev & Zhou 2021) for Bernoulli guide sites: ``n`` negatively correlated draws.

For ``b ~ Bernoulli(p)``, ``p = \sigma(\alpha)``, the leave-one-out score-function estimator
over ``n`` *independent* draws is

.. math:: \hat g = \frac1{n-1}\sum_i \big(f(b_i) - \bar f\big)\,(b_i - p),
          \qquad \bar f = \frac1n\sum_j f(b_j),

(``b - p`` is ``\nabla_\alpha \log q(b)``). ARMS draws the ``n`` uniforms behind the ``b_i``
from a *Dirichlet copula* instead: ``d \sim \mathrm{Dirichlet}(1, \dots, 1)`` (``n``
components) and ``u_i = 1 - (1 - d_i)^{n-1}`` (the ``\mathrm{Beta}(1, n-1)`` CDF of ``d_i``),
so each ``u_i`` is ``U(0, 1)`` but they are negatively dependent (``\sum_i d_i = 1``), and so
are the draws ``b_i = 1[u_i < p]`` (for ``p > 1/2``: ``b_i = 1 - 1[u_i < 1 - p]``, the
mirror image, so the dependence acts on the rarer value). Each ``b_i`` is still
``Bernoulli(p)``, but ``E[f(b_j)(b_i - p)] = \mathrm{Cov}(b_i, b_j)\,\Delta`` no longer vanishes
for ``j \ne i`` (``\Delta = f(1) - f(0)``), and the sum has expectation
``(n-1)(1 - c)\,p(1-p)\,\Delta`` with ``c`` the correlation of two draws. The ARMS estimator
divides it out:

.. math:: \hat g = \frac1{(n-1)(1 - c(p))}\sum_i \big(f(b_i) - \bar f\big)(b_i - p),

unbiased for ``\nabla_\alpha E_q[f] = p(1-p)E[\Delta]``. With ``m = \min(p, 1-p)`` and
``a = 1 - (1-m)^{1/(n-1)}`` (so ``P(u_i < m) = P(d_i < a)``), the uniform Dirichlet gives
``P(d_i > a, d_j > a) = (1 - 2a)_+^{n-1}``, hence

.. math:: P(b_i = b_j = 1[\text{rare}]) = 2m - 1 + (1 - 2a)_+^{n-1},\qquad
          c = \frac{2m - 1 + (1-2a)_+^{n-1} - m^2}{m(1-m)} \in [-\tfrac1{n-1}, 0].

For ``n = 2`` the copula is the antithetic pair ``u, 1 - u`` (ARM's coupling, which DisARM
Rao-Blackwellizes further). For a factorized ``q`` each coordinate gets its own Dirichlet
draw, independent of the others; conditioning on the other coordinates, ``f`` is linear in
``b_{\cdot d}``, so the same correction holds per coordinate with ``E[\Delta_d]`` the expected
effect of flipping coordinate ``d``: the multivariate estimator is unbiased for factorized
Bernoulli guides.

As in :mod:`.disarm`: ``f`` is the particle's ``\log p(x, \cdot) - \log q(\cdot)``, per datum
when the model has an independent data plate; ``f``'s own ``\alpha``-dependence through
``-\log q_\alpha(b_i)`` has expectation zero (each ``b_i`` is marginally ``q``) and is left
out; the ``n`` draws are ``n`` vectorized particles of the usual ELBO, so reparameterized sites
get the pathwise gradient averaged over them, and the model's parameters the mean of their
``n`` gradients (every particle is marginally a draw from ``q``).

Scope: as :class:`~pyro_reparam.estimators.DisARM_ELBO`: non-reparameterized guide sites must
be ``Bernoulli`` (or ``Independent(Bernoulli)``) whose logits do not depend on latents drawn
per particle.
"""

from __future__ import annotations

import torch
from pyro.poutine.messenger import Messenger

from pyro_reparam.estimators.disarm import _align, _bernoulli
from pyro_reparam.estimators.vimco import CoupledELBO

_TINY = 1e-12


def dirichlet_copula_correlation(probs: torch.Tensor, n: int) -> torch.Tensor:
    """``c(p)``: the correlation of two of the ``n`` ARMS draws of ``Bernoulli(p)`` (computed in
    double precision, returned in ``probs``' dtype)."""
    m = torch.minimum(probs, 1 - probs).double().clamp(min=_TINY)
    a = -torch.expm1(torch.log1p(-m) / (n - 1))
    both = 2 * m - 1 + (1 - 2 * a).clamp(min=0) ** (n - 1)
    return ((both - m * m) / (m * (1 - m))).to(probs.dtype)


def dirichlet_copula_bernoulli(probs: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    """``n`` ARMS draws of ``Bernoulli(probs)`` stacked along ``dim`` (``probs`` has size 1 there),
    negatively dependent through a Dirichlet copula, independent across other positions."""
    shape = list(probs.shape)
    shape[dim] = n
    e = -torch.rand(shape, dtype=probs.dtype, device=probs.device).log()
    d = e / e.sum(dim, keepdim=True)
    u = -torch.expm1((n - 1) * torch.log1p(-d))  # Beta(1, n-1) CDF: uniform marginals
    rare = u < torch.minimum(probs, 1 - probs)
    return torch.where(probs < 0.5, rare, ~rare).to(probs.dtype)


class _CopulaDraws(Messenger):
    """Samples every Bernoulli guide site as ``n`` Dirichlet-copula draws along the particle
    dim."""

    def __init__(self, nesting: int, n: int):
        super().__init__()
        self.nesting, self.n = nesting, n
        self.sites: dict[str, int] = {}  # site -> index of the particle dim in its value

    def _pyro_sample(self, msg):
        if msg["is_observed"] or msg["done"] or msg["value"] is not None:
            return
        bern, event = _bernoulli(msg["fn"])
        if bern is None:
            return
        logits = bern.logits
        batch = logits.dim() - event - len(bern.event_shape)
        if batch < self.nesting or logits.shape[batch - self.nesting] != self.n:
            raise ValueError(
                f"ARMS_ELBO: site {msg['name']!r} is not in the particle plate as expected"
            )
        pd = batch - self.nesting
        first = logits.narrow(pd, 0, 1)
        if not torch.equal(logits, first.expand_as(logits)):
            raise NotImplementedError(
                f"ARMS_ELBO: the logits of site {msg['name']!r} differ between particles (they "
                "depend on another latent drawn per particle); only Bernoulli sites whose "
                "logits do not depend on sampled values are supported"
            )
        with torch.no_grad():
            value = dirichlet_copula_bernoulli(torch.sigmoid(first), pd, self.n)
        msg["value"] = value.to(logits.dtype)
        msg["done"] = True
        self.sites[msg["name"]] = pd


class ARMS_ELBO(CoupledELBO):
    """The ELBO with ARMS gradients (Dirichlet copula) for the logits of Bernoulli guide sites.

    :param int num_particles: ``n >= 2`` negatively correlated vectorized particles (``n``
        model evaluations per step).
    :param max_plate_nesting: the model's plate nesting, guessed when infinite.

    ``loss`` is the negative ELBO estimate averaged over the ``n`` particles (not the IWAE
    bound); see the module docstring for the gradient.
    """

    min_particles = 2
    families = "Bernoulli"

    def __init__(self, num_particles: int = 4, max_plate_nesting: float | None = float("inf")):
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)

    def _draws(self) -> _CopulaDraws:
        return _CopulaDraws(-self.particle_dim, self.num_particles)

    def _site_terms(self, coupled, draws, f, run):
        guide_trace = coupled.guide_trace
        n, total = self.num_particles, 0.0
        centred = f - f.mean(0, keepdim=True)
        for name, pd in draws.sites.items():
            site = guide_trace.nodes[name]
            bern, event = _bernoulli(site["fn"])
            logits = bern.logits
            p = torch.sigmoid(logits.narrow(pd, 0, 1)).detach()
            c = dirichlet_copula_correlation(p, n)
            df = _align(centred, logits.dim() - event, event)
            coef = df * (site["value"] - p) / ((n - 1) * (1 - c))
            total = total + (coef.detach() * logits).sum()
        return total
