r"""The VAE's objectives in plain torch: what Pyro's ELBOs compute on ``VAE.model``/``VAE.guide``.

With ``q(z | x) = N(mu, diag sigma^2)`` (``mu``, ``sigma``: ``(B, d)``), ``K`` draws
``z_k = mu + sigma * eps_k`` (``eps``: ``(K, B, d)``, or ``(B, d)`` when ``K = 1``, drawn as
Pyro's ``Normal.rsample`` draws it under the vectorized particle plate, so one seed gives the
same ``z``) and ``log w_k = log p(x | z_k) + log p(z_k) - log q(z_k | x)``, each returns
``(loss, surrogate)``, summed over the batch:

* :func:`analytic`: ``-(1/K) sum_k log p(x | z_k) + KL(q || N(0, I))`` (``TraceMeanField_ELBO``);
* :func:`monte_carlo`: ``-(1/K) sum_k log w_k`` (``Trace_ELBO``);
* :func:`iwae`: ``-log (1/K) sum_k w_k`` per datum (``RenyiELBO(alpha=0)``);
* :func:`dreg`: the same loss; its surrogate gives the decoder ``sum_k w~_k grad log p`` and the
  encoder ``sum_k w~_k^2 d log w_k / dz_k dz_k / dphi`` with ``phi`` stopped in ``log q``
  (``DReG_ELBO``), ``w~ = softmax_k log w``.

For the first three the surrogate *is* the loss (every term is pathwise).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch.distributions import ContinuousBernoulli
from torch.nn import functional as F

from pyro_reparam.models.vae import _decode_batched

if TYPE_CHECKING:
    from pyro_reparam.models.vae import VAE, Autoencoder

_HALF_LOG_2PI = math.log(math.sqrt(2 * math.pi))


def normal_log_prob(value: torch.Tensor, loc, scale) -> torch.Tensor:
    """``log N(value; loc, scale^2)`` elementwise, as ``torch.distributions.Normal`` writes it."""
    return -((value - loc) ** 2) / (2 * scale**2) - scale.log() - _HALF_LOG_2PI


def _pixel_terms(vae: VAE | Autoencoder, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``log p(x_j | z)`` per pixel, shape ``z.shape[:-1] + (x_dim,)``: ``VAE.likelihood_given``'s
    log-density, unvalidated (the callers check ``x``)."""
    out = _decode_batched(vae.decoder, z)
    if vae.likelihood == "bernoulli":
        return -F.binary_cross_entropy_with_logits(out, x.expand_as(out), reduction="none")
    if vae.likelihood == "continuous_bernoulli":
        return ContinuousBernoulli(logits=out, validate_args=False).log_prob(x)
    return normal_log_prob(x, torch.sigmoid(out), vae.log_sigma.exp())


def pixel_log_prob(vae: VAE | Autoencoder, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``log p(x | z)`` summed over pixels, shape ``z.shape[:-1]``."""
    return _pixel_terms(vae, z, x).sum(-1)


def pixel_log_prob_sum(vae: VAE | Autoencoder, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``pixel_log_prob(vae, z, x).sum()`` (a scalar) in one reduction; the Bernoulli one inside
    the fused kernel (no per-pixel intermediate to sum and backpropagate)."""
    if vae.likelihood != "bernoulli":
        return _pixel_terms(vae, z, x).sum()
    out = _decode_batched(vae.decoder, z)
    return -F.binary_cross_entropy_with_logits(out, x.expand_as(out), reduction="sum")


def draw(loc: torch.Tensor, scale: torch.Tensor, k: int) -> torch.Tensor:
    """``z = loc + eps * scale`` with ``eps`` of shape ``(k, B, d)`` (``(B, d)`` for ``k = 1``)."""
    shape = (k, *loc.shape) if k > 1 else loc.shape
    return loc + loc.new_empty(shape).normal_() * scale


def _log_w(vae: VAE, x, z, loc, scale) -> torch.Tensor:
    """``log p(x | z) + log N(z; 0, I) - log q(z | x)``, shape ``z.shape[:-1]``."""
    log_prior = (-(z**2) / 2 - _HALF_LOG_2PI).sum(-1)
    return pixel_log_prob(vae, z, x) + log_prior - normal_log_prob(z, loc, scale).sum(-1)


def analytic(vae: VAE, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative ELBO with the closed-form KL,
    ``KL = sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2) / 2``."""
    loc, scale = vae.posterior_params(x)
    var = scale.pow(2)
    kl = 0.5 * (var + loc.pow(2) - 1 - var.log())
    log_px = pixel_log_prob_sum(vae, draw(loc, scale, k), x)
    loss = kl.sum() - (log_px if k == 1 else log_px / k)
    return loss, loss


def monte_carlo(vae: VAE, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative ELBO, ``-(1/K) sum_k log w_k`` (the KL estimated by the same draws)."""
    loc, scale = vae.posterior_params(x)
    z = draw(loc, scale, k)
    log_prior = -(z**2) / 2 - _HALF_LOG_2PI
    log_w = pixel_log_prob_sum(vae, z, x) + (log_prior - normal_log_prob(z, loc, scale)).sum()
    loss = -(log_w if k == 1 else log_w / k)
    return loss, loss


def iwae(vae: VAE, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative IWAE bound, ``-sum_b (logsumexp_k log w_kb - log K)``."""
    loc, scale = vae.posterior_params(x)
    log_w = _log_w(vae, x, draw(loc, scale, k), loc, scale)
    loss = -(torch.logsumexp(log_w, 0) - math.log(k)).sum()
    return loss, loss


def dreg(vae: VAE, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative IWAE bound and the DReG surrogate ``-sum w~ log w`` with ``log q`` taken at
    stopped ``(mu, sigma)`` and the gradient reaching ``z`` scaled once more by ``w~`` (a hook),
    so that the decoder gets ``w~`` and the encoder, through ``z`` only, ``w~^2``."""
    loc, scale = vae.posterior_params(x)
    z = draw(loc, scale, k)
    log_w = _log_w(vae, x, z, loc.detach(), scale.detach())
    lw = log_w.detach()
    loss = -(torch.logsumexp(lw, 0) - math.log(k)).sum()
    weights = torch.softmax(lw, 0)
    if z.requires_grad:
        z.register_hook(lambda g: g * weights.unsqueeze(-1))
    return loss, -(weights * log_w).sum()
