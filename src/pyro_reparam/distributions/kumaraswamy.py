"""Kumaraswamy distribution: a Beta-like law on (0, 1) with a closed-form inverse CDF."""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution, constraints
from torch.distributions.utils import broadcast_all

_EULER_GAMMA = 0.5772156649015329


def _log_beta(x, y):
    return torch.lgamma(x) + torch.lgamma(y) - torch.lgamma(x + y)


class Kumaraswamy(TorchDistribution):
    r"""Kumaraswamy(a, b) on (0, 1), a reparameterizable stand-in for Beta(a, b).

    .. math:: p(z) = a b z^{a-1} (1 - z^a)^{b-1},\qquad F(z) = 1 - (1 - z^a)^b.

    Pathwise sampler (inverse CDF): ``z = (1 - (1 - u)^{1/b})^{1/a}``, computed in log space
    (``log1p``/``expm1``) so that it stays accurate near 0 and 1. Moments:
    ``E[z^n] = b B(1 + n/a, b)``.
    """

    arg_constraints = {"a": constraints.positive, "b": constraints.positive}
    support = constraints.unit_interval
    has_rsample = True

    def __init__(self, a, b, validate_args=None):
        self.a, self.b = broadcast_all(a, b)
        super().__init__(self.a.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(Kumaraswamy, _instance)
        batch_shape = torch.Size(batch_shape)
        new.a = self.a.expand(batch_shape)
        new.b = self.b.expand(batch_shape)
        super(Kumaraswamy, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        u = torch.rand(shape, dtype=self.a.dtype, device=self.a.device)
        return self.icdf(u)

    def icdf(self, value):
        tiny = torch.finfo(self.a.dtype).tiny
        # log(1 - (1 - u)^(1/b)) = log(-expm1(log1p(-u) / b))
        log_one_minus = torch.log(-torch.expm1(torch.log1p(-value) / self.b)).clamp(min=-1e30)
        z = torch.exp(log_one_minus / self.a)
        eps = torch.finfo(self.a.dtype).eps
        return z.clamp(min=tiny, max=1 - eps / 2)

    def cdf(self, value):
        return -torch.expm1(self.b * torch.log1p(-value.pow(self.a)))

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        log_z = torch.log(value)
        log_one_minus_za = torch.log(-torch.expm1(self.a * log_z))
        return (
            torch.log(self.a)
            + torch.log(self.b)
            + (self.a - 1) * log_z
            + (self.b - 1) * log_one_minus_za
        )

    def moment(self, n: float) -> torch.Tensor:
        """Raw moment ``E[z^n] = b B(1 + n/a, b)``."""
        return self.b * torch.exp(_log_beta(1 + n / self.a, self.b))

    @property
    def mean(self):
        return self.moment(1)

    @property
    def variance(self):
        return self.moment(2) - self.moment(1).pow(2)

    def entropy(self):
        harmonic_b = torch.digamma(self.b + 1) + _EULER_GAMMA
        return (1 - 1 / self.b) + (1 - 1 / self.a) * harmonic_b - torch.log(self.a * self.b)
