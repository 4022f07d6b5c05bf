"""Force the score-function estimator on any family without touching the original."""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution


class ScoreFunction(TorchDistribution):
    r"""Wraps ``base`` so that its samples carry no pathwise gradient (``has_rsample = False``).

    Pyro's ELBOs then use the score-function estimator ``E[f(z) grad log q(z)]`` for the site.
    ``base`` itself is left as it was (unlike ``base.has_rsample_(False)``, which mutates it), so
    the same guide can be compared under both estimators.
    """

    arg_constraints = {}
    has_rsample = False

    def __init__(self, base: TorchDistribution, validate_args=None):
        if not isinstance(base, torch.distributions.Distribution):
            raise TypeError(
                f"ScoreFunction: argument base must be a distribution, got {type(base).__name__}"
            )
        self.base = base
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self):
        return self.base.support

    @property
    def has_enumerate_support(self):
        return self.base.has_enumerate_support

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ScoreFunction, _instance)
        new.base = self.base.expand(batch_shape)
        super(ScoreFunction, new).__init__(
            new.base.batch_shape, new.base.event_shape, validate_args=False
        )
        return new

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return self.base.sample(sample_shape)

    def log_prob(self, value):
        return self.base.log_prob(value)

    def enumerate_support(self, expand=True):
        return self.base.enumerate_support(expand=expand)

    @property
    def mean(self):
        return self.base.mean

    @property
    def variance(self):
        return self.base.variance

    def entropy(self):
        return self.base.entropy()
