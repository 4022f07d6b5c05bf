"""Build pathwise families: z = g_theta(eps) from a fixed noise law, or z = F^{-1}(u)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro.distributions import TorchDistribution, TransformedDistribution, Uniform
from torch.distributions.transforms import Transform


class Reparameterized(TransformedDistribution):
    r"""The general reparameterized family ``z = g_theta(eps)``, ``eps ~ noise``.

    ``noise`` is a fixed distribution (its parameters carry no gradient); ``transform`` is an
    invertible, differentiable :class:`~torch.distributions.transforms.Transform` (or a list of
    them, applied in order), e.g. ``AffineTransform(mu, sigma)`` or a Pyro normalizing flow, whose
    parameters carry the gradients. The density follows by change of variables:

    .. math:: \log q(z) = \log p_\epsilon(g^{-1}(z)) - \log |\det J_g(g^{-1}(z))|.
    """

    def __init__(
        self,
        noise: TorchDistribution,
        transform: Transform | Sequence[Transform],
        validate_args=None,
    ):
        if not isinstance(noise, torch.distributions.Distribution):
            raise TypeError(
                "Reparameterized: argument noise must be a distribution, got "
                f"{type(noise).__name__}"
            )
        transforms = list(transform) if isinstance(transform, (list, tuple)) else [transform]
        for i, t in enumerate(transforms):
            if not isinstance(t, Transform):
                raise TypeError(
                    f"Reparameterized: argument transform[{i}] must be a "
                    f"torch.distributions.transforms.Transform, got {type(t).__name__}"
                )
            if not t.bijective:
                raise ValueError(
                    f"Reparameterized: argument transform[{i}] ({type(t).__name__}) is not "
                    f"bijective, so log_prob by change of variables is undefined"
                )
        trainable = [n for n, v in _tensor_params(noise) if v.requires_grad]
        if trainable:
            raise ValueError(
                f"Reparameterized: the noise distribution's parameter(s) {trainable} require "
                f"grad; noise must be fixed - put learnable parameters in the transform"
            )
        super().__init__(noise, transforms, validate_args=validate_args)

    @property
    def noise(self) -> TorchDistribution:
        return self.base_dist

    @property
    def has_rsample(self) -> bool:
        return True

    def rsample(self, sample_shape=torch.Size()):
        eps = self.base_dist.sample(sample_shape)
        for t in self.transforms:
            eps = t(eps)
        return eps

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return self.rsample(sample_shape)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(Reparameterized, _instance)
        return super().expand(batch_shape, _instance=new)


def _tensor_params(d):
    for name in getattr(d, "arg_constraints", {}):
        value = getattr(d, name, None)
        if isinstance(value, torch.Tensor):
            yield name, value


class InverseCDF(TorchDistribution):
    r"""Makes any family with a differentiable ``icdf`` pathwise: ``z = F^{-1}(u)``, ``u ~ U(0,1)``.

    ``dz/dtheta = dF^{-1}(u; theta)/dtheta`` by autograd through ``base.icdf``. ``log_prob``,
    ``support``, ``mean`` and ``variance`` are those of ``base``. Useful for families whose own
    sampler has no gradient, or to compare samplers.
    """

    arg_constraints = {}
    has_rsample = True

    def __init__(self, base: TorchDistribution, validate_args=None):
        if not isinstance(base, torch.distributions.Distribution):
            raise TypeError(
                f"InverseCDF: argument base must be a distribution, got {type(base).__name__}"
            )
        if base.event_shape:
            raise ValueError(
                f"InverseCDF: argument base must be univariate (event_shape ()), got "
                f"{type(base).__name__} with event_shape {tuple(base.event_shape)}"
            )
        probe = torch.full(base.batch_shape, 0.5, dtype=_dtype_of(base), device=_device_of(base))
        try:
            base.icdf(probe)
        except NotImplementedError:
            raise ValueError(
                f"InverseCDF: argument base ({type(base).__name__}) has no icdf(); wrap a "
                f"family with an inverse CDF, or use Reparameterized(noise, transform)"
            ) from None
        self.base = base
        super().__init__(base.batch_shape, base.event_shape, validate_args=validate_args)

    @property
    def support(self):
        return self.base.support

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(InverseCDF, _instance)
        new.base = self.base.expand(batch_shape)
        super(InverseCDF, new).__init__(new.base.batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        dtype, device = _dtype_of(self.base), _device_of(self.base)
        eps = torch.finfo(dtype).eps
        u = Uniform(torch.tensor(eps, dtype=dtype, device=device), 1 - eps).sample(shape)
        return self.base.icdf(u)

    def log_prob(self, value):
        return self.base.log_prob(value)

    def cdf(self, value):
        return self.base.cdf(value)

    def icdf(self, value):
        return self.base.icdf(value)

    @property
    def mean(self):
        return self.base.mean

    @property
    def variance(self):
        return self.base.variance

    def entropy(self):
        return self.base.entropy()


def _dtype_of(d) -> torch.dtype:
    for _, v in _tensor_params(d):
        if v.is_floating_point():
            return v.dtype
    return torch.get_default_dtype()


def _device_of(d) -> torch.device:
    for _, v in _tensor_params(d):
        return v.device
    return torch.tensor(()).device


__all__ = ["InverseCDF", "Reparameterized"]
