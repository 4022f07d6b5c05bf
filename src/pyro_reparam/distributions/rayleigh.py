"""Rayleigh distribution with a pathwise sampler."""

from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution, constraints
from torch.distributions.utils import broadcast_all

_EULER_GAMMA = 0.5772156649015329


class Rayleigh(TorchDistribution):
    r"""Rayleigh(scale): the norm of a 2-D isotropic Normal with standard deviation ``scale``.

    .. math:: p(z) = \frac{z}{\sigma^2} e^{-z^2 / 2\sigma^2},\quad z \ge 0.

    Pathwise sampler (inverse CDF): ``z = scale * sqrt(-2 log u)``, ``u ~ U(0, 1)``, so
    ``dz/dscale = z / scale``.
    """

    arg_constraints = {"scale": constraints.positive}
    support = constraints.nonnegative
    has_rsample = True

    def __init__(self, scale, validate_args=None):
        (self.scale,) = broadcast_all(scale)
        super().__init__(self.scale.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(Rayleigh, _instance)
        new.scale = self.scale.expand(torch.Size(batch_shape))
        super(Rayleigh, new).__init__(torch.Size(batch_shape), validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        u = torch.rand(shape, dtype=self.scale.dtype, device=self.scale.device)
        # u in (0, 1): the clamp keeps z > 0 so that log_prob(z) stays finite.
        u = u.clamp_(min=torch.finfo(u.dtype).tiny)
        return self.scale * torch.sqrt(-2 * torch.log(u))

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        s2 = self.scale.pow(2)
        return torch.log(value) - torch.log(s2) - value.pow(2) / (2 * s2)

    def cdf(self, value):
        return -torch.expm1(-value.pow(2) / (2 * self.scale.pow(2)))

    def icdf(self, value):
        return self.scale * torch.sqrt(-2 * torch.log1p(-value))

    @property
    def mean(self):
        return self.scale * math.sqrt(math.pi / 2)

    @property
    def mode(self):
        return self.scale

    @property
    def variance(self):
        return (4 - math.pi) / 2 * self.scale.pow(2)

    def entropy(self):
        return 1 + torch.log(self.scale / math.sqrt(2)) + _EULER_GAMMA / 2
