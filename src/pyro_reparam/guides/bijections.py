"""The bijection from unconstrained space to a site's support, as Pyro's autoguides use it.

``biject_to(support)`` for every support torch and Pyro register, plus ``positive_definite``
(Wishart sites), which neither does: :class:`PositiveDefiniteBijection`.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import constraints
from pyro.distributions.transforms import biject_to
from pyro.infer.autoguide.utils import helpful_support_errors
from torch.distributions.transforms import IndependentTransform, Transform


class PositiveDefiniteBijection(Transform):
    """``u`` in ``R^{d(d+1)/2}`` -> ``L`` lower triangular (rows of ``u``, ``exp`` on the diagonal)
    -> ``S = L L^T`` positive definite.

    ``log|det dS/du| = d log 2 + sum_i (d - i + 2) log L_ii`` (``i = 1..d``), with respect to the
    ``d(d+1)/2`` lower-triangle entries of ``S``: the measure of ``Wishart.log_prob``
    (``dS = 2^d prod_i L_ii^(d-i+1) dL``, Muirhead 1982, Thm 2.1.9, and ``dL_ii = L_ii du_ii``).
    """

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.positive_definite
    bijective = True

    def __eq__(self, other):
        return isinstance(other, PositiveDefiniteBijection)

    @staticmethod
    def _size(n: int) -> int:
        d = round((math.sqrt(8 * n + 1) - 1) / 2)
        if d * (d + 1) // 2 != n:
            raise ValueError(f"PositiveDefiniteBijection: {n} is not a triangular number d(d+1)/2")
        return d

    def _tril(self, u):
        d = self._size(u.shape[-1])
        rows, cols = torch.tril_indices(d, d, device=u.device)
        L = u.new_zeros((*u.shape[:-1], d, d))
        L[..., rows, cols] = u
        return L.tril(-1) + L.diagonal(dim1=-2, dim2=-1).exp().diag_embed()

    def _call(self, u):
        L = self._tril(u)
        return L @ L.mT

    def _inverse(self, s):
        L = torch.linalg.cholesky(s)
        L = L.tril(-1) + L.diagonal(dim1=-2, dim2=-1).log().diag_embed()
        rows, cols = torch.tril_indices(s.shape[-1], s.shape[-1], device=s.device)
        return L[..., rows, cols]

    def log_abs_det_jacobian(self, u, s):
        d = s.shape[-1]
        rows, cols = torch.tril_indices(d, d, device=u.device)
        log_diag = u[..., rows == cols]
        power = torch.arange(d + 1, 1, -1, dtype=u.dtype, device=u.device)
        return d * math.log(2.0) + (power * log_diag).sum(-1)

    def forward_shape(self, shape):
        d = self._size(shape[-1])
        return torch.Size((*shape[:-1], d, d))

    def inverse_shape(self, shape):
        d = shape[-1]
        return torch.Size((*shape[:-2], d * (d + 1) // 2))


def bijection(site: dict) -> Transform:
    """The bijection ``R^m -> support`` of a continuous site (an error naming the site when
    there is none, e.g. for a discrete or spherical support)."""
    support, ndims = site["fn"].support, 0
    while isinstance(support, constraints.independent):
        support, ndims = support.base_constraint, ndims + support.reinterpreted_batch_ndims
    if support is constraints.positive_definite:
        return (
            IndependentTransform(PositiveDefiniteBijection(), ndims)
            if ndims
            else PositiveDefiniteBijection()
        )
    with helpful_support_errors(site):
        return biject_to(site["fn"].support)
