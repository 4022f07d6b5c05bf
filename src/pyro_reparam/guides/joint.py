"""A joint Gaussian over the unconstrained values of several continuous sites.

``u = (u_1, ..., u_k)``, each site's unconstrained value flattened, ``u ~ N(loc, Sigma)`` with

* ``lowrank``: ``Sigma = diag(s) (W W^T + I) diag(s)``, ``W`` of shape ``(D, rank)``;
* ``fullrank``: ``Sigma = diag(s) L L^T diag(s)``, ``L`` lower triangular,

as Pyro's ``AutoLowRankMultivariateNormal`` / ``AutoMultivariateNormal``. ``u`` is drawn once per
call at the auxiliary site ``_<guide name>_latent`` (``infer={"is_auxiliary": True}``); site
``i`` then gets ``z_i = T_i(u_i)`` as a point mass carrying ``log|det du_i/dz_i|``
(:class:`JacobianDelta`), so the guide's density of ``z`` is
``N(u; loc, Sigma) prod_i |det du_i/dz_i|``.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.distribution import Distribution as PyroDistribution
from pyro.distributions.util import eye_like, sum_rightmost
from pyro.nn.module import PyroModule, PyroParam
from torch.distributions import Distribution, register_kl
from torch.distributions.transforms import Transform

KINDS = ("meanfield", "lowrank", "fullrank")


class JacobianDelta(dist.Delta):
    """A point mass whose ``log_density`` is a change of variables. Its KL to any law has no
    closed form: Pyro's ``KL(Delta || p) = -log p(v)`` would drop ``log_density``, and an ELBO
    using it (``TraceMeanField_ELBO``) would lose the Jacobian."""


@register_kl(JacobianDelta, PyroDistribution)  # beats Pyro's (Delta, Distribution)
@register_kl(JacobianDelta, Distribution)
def _no_closed_form(p, q):
    raise NotImplementedError


class JointGaussian(PyroModule):
    """The joint Gaussian of ``layout``: ``(site, unconstrained shape, unconstrained event_dim)``
    per site, in the order of ``init`` (the concatenated initial unconstrained values)."""

    def __init__(self, layout: list, init: torch.Tensor, kind: str, rank: int | None, scale: float):
        super().__init__()
        size = init.numel()
        self._layout = layout
        self.kind = kind
        self.loc = PyroParam(init, constraints.real, event_dim=1)
        if kind == "lowrank":
            self.rank = rank or max(1, round(size**0.5))
            # a fixed draw from a private generator: the caller's random streams stay untouched
            g = torch.Generator().manual_seed(0)
            factor = torch.randn(size, self.rank, generator=g, dtype=init.dtype) / self.rank**0.5
            self.cov_factor = PyroParam(factor.to(init.device), constraints.real, event_dim=2)
            self.scale = PyroParam(
                init.new_full((size,), math.sqrt(0.5) * scale), constraints.softplus_positive, 1
            )
        else:
            self.scale = PyroParam(init.new_full((size,), scale), constraints.softplus_positive, 1)
            self.scale_tril = PyroParam(
                eye_like(init, size), constraints.softplus_lower_cholesky, 2
            )

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self._layout]

    def posterior(self):
        """``q(u)``: a (low-rank) multivariate normal of event shape ``(D,)``."""
        if self.kind == "lowrank":
            scale = self.scale
            return dist.LowRankMultivariateNormal(
                self.loc, self.cov_factor * scale.unsqueeze(-1), scale * scale
            )
        return dist.MultivariateNormal(self.loc, scale_tril=self.scale[..., None] * self.scale_tril)

    def marginal_scale(self) -> torch.Tensor:
        """``sqrt(diag Sigma)``."""
        if self.kind == "lowrank":
            return self.scale * (self.cov_factor.pow(2).sum(-1) + 1).sqrt()
        return (self.scale[..., None] * self.scale_tril).pow(2).sum(-1).sqrt()

    def unpack(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each site's unconstrained value from ``latent`` of shape ``batch + (D,)`` (a batch of
        particles goes to the left of the site's own dims)."""
        batch = latent.shape[:-1]
        out, pos = {}, 0
        for name, shape, event_dim in self._layout:
            size = math.prod(shape)
            shape = torch.broadcast_shapes(shape, batch + (1,) * event_dim)
            out[name] = latent[..., pos : pos + size].reshape(shape)
            pos += size
        return out


def point_mass(transform: Transform, u: torch.Tensor, event_dim: int, masked: bool):
    """``JacobianDelta(T(u))`` with ``log_density = log|det du/dz|`` summed over the site's event
    dims (skipped under ``poutine.mask(mask=False)``, where nothing is scored: ``masked``)."""
    value = transform(u)
    if masked:
        return JacobianDelta(value, event_dim=event_dim)
    log_density = transform.inv.log_abs_det_jacobian(value, u)
    log_density = sum_rightmost(log_density, log_density.dim() - value.dim() + event_dim)
    return JacobianDelta(value, log_density=log_density, event_dim=event_dim)
