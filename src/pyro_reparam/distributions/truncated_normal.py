"""Truncated Normal with an inverse-CDF sampler that stays accurate far in the tails."""

from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution, constraints
from torch.distributions.utils import broadcast_all

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _log_phi(x):
    return -0.5 * x * x - _LOG_SQRT_2PI


def _log_sub_exp(a, b):
    """log(exp(a) - exp(b)) for a >= b, accurate when the two are close."""
    return a + torch.log(-torch.expm1(b - a))


def _finite_or_zero(x):
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _ndtri_log(log_p, steps: int = 3):
    """Inverse of ``log Phi``: x with log Phi(x) = log_p, for log_p <= log(1/2), in float64.

    Starts from ``ndtri(exp(log_p))`` (or the asymptotic tail expansion where ``exp`` would
    underflow) and polishes with Newton steps on ``log Phi(x) - log_p``, whose derivative is
    ``phi(x) / Phi(x)``.
    """
    t = -2.0 * log_p
    tail = -torch.sqrt((t - torch.log(t.clamp(min=1.0)) - math.log(2 * math.pi)).clamp(min=0.0))
    x = torch.where(log_p > -600.0, torch.special.ndtri(torch.exp(log_p)), tail)
    for _ in range(steps):
        log_cdf = torch.special.log_ndtr(x)
        x = x - (log_cdf - log_p) * torch.exp(log_cdf - _log_phi(x))
    return x


class TruncatedNormal(TorchDistribution):
    r"""Normal(loc, scale) restricted to ``[low, high]`` (either end may be infinite).

    With :math:`\alpha = (low - loc)/scale`, :math:`\beta = (high - loc)/scale` and
    :math:`Z = \Phi(\beta) - \Phi(\alpha)`:

    .. math:: p(z) = \frac{\phi((z - loc)/scale)}{scale\, Z},\quad low \le z \le high.

    Sampling uses the inverse CDF, ``x = Phi^{-1}(Phi(alpha) + u Z)``, evaluated in log space and
    float64 on whichever side of the mean keeps ``Phi`` representable, so windows 30 or more
    standard deviations out give finite samples with the right moments. Gradients are implicit:
    ``dx/dalpha = phi(alpha) (1 - u) / phi(x)``, ``dx/dbeta = phi(beta) u / phi(x)``, and
    ``z = loc + scale * x``.
    """

    arg_constraints = {
        "loc": constraints.real,
        "scale": constraints.positive,
        "low": constraints.dependent(is_discrete=False, event_dim=0),
        "high": constraints.dependent(is_discrete=False, event_dim=0),
    }
    has_rsample = True

    def __init__(self, loc, scale, low, high, validate_args=None):
        self.loc, self.scale, self.low, self.high = broadcast_all(loc, scale, low, high)
        if validate_args is not False and torch.distributions.Distribution._validate_args:
            if (self.low >= self.high).any():
                raise ValueError(
                    "TruncatedNormal: parameter low must be < high everywhere "
                    f"(low={self.low.detach().cpu()}, high={self.high.detach().cpu()})"
                )
            if torch.isnan(self.low).any() or torch.isnan(self.high).any():
                raise ValueError("TruncatedNormal: parameters low and high must not be NaN")
            for name in ("loc", "scale"):
                value = getattr(self, name)
                if not torch.isfinite(value).all():
                    raise ValueError(
                        f"TruncatedNormal: parameter {name} must be finite, got "
                        f"{value.detach().cpu()}; an infinite {name} has no truncated Normal"
                    )
        super().__init__(self.loc.shape, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.interval(self.low, self.high)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(TruncatedNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        for name in ("loc", "scale", "low", "high"):
            setattr(new, name, getattr(self, name).expand(batch_shape))
        super(TruncatedNormal, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _standardized_bounds(self):
        """alpha, beta with infinite ends kept out of the autograd graph (no inf * 0 = NaN)."""
        out = []
        for bound, inf in ((self.low, -math.inf), (self.high, math.inf)):
            finite = torch.isfinite(bound)
            std = (torch.where(finite, bound, torch.zeros_like(bound)) - self.loc) / self.scale
            out.append((torch.where(finite, std, torch.full_like(std, inf)), finite, std))
        return out

    # Standardized bounds, flipped so that the window never lies entirely right of the mean:
    # there Phi rounds to 1; its mirror image on the left is representable in log space.
    def _frame(self):
        (alpha, _, _), (beta, _, _) = self._standardized_bounds()
        alpha, beta = alpha.double(), beta.double()
        flip = alpha > 0
        a = torch.where(flip, -beta, alpha)
        b = torch.where(flip, -alpha, beta)
        return a, b, flip

    def _log_z(self, a, b):
        return _log_sub_exp(torch.special.log_ndtr(b), torch.special.log_ndtr(a))

    def _standard_icdf(self, u):
        """x in the standardized frame for uniforms u, with the implicit derivatives."""
        a, b, flip = self._frame()
        u = u.double()
        log_cdf_a, log_cdf_b = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
        log_p = torch.logaddexp(torch.log1p(-u) + log_cdf_a, torch.log(u) + log_cdf_b)
        x = _ndtri_log(torch.minimum(log_p, torch.full_like(log_p, -1e-300)))
        # Where the window straddles the mean, Phi(b) may be near 1: invert from the right.
        right = log_p > math.log(0.5)
        log_sf = torch.logaddexp(
            torch.log1p(-u) + torch.special.log_ndtr(-a), torch.log(u) + torch.special.log_ndtr(-b)
        )
        x = torch.where(right, -_ndtri_log(torch.where(right, log_sf, -1.0)), x)
        x = torch.maximum(torch.minimum(x, b), a)
        log_z = self._log_z(a, b)
        log_cdf_x = torch.special.log_ndtr(x)
        # 1 - u = (Phi(b) - Phi(x)) / Z and u = (Phi(x) - Phi(a)) / Z, kept in log space.
        log_upper = torch.where(
            x < b, _log_sub_exp(log_cdf_b, torch.minimum(log_cdf_x, log_cdf_b)), -math.inf
        )
        log_lower = torch.where(
            x > a, _log_sub_exp(torch.maximum(log_cdf_x, log_cdf_a), log_cdf_a), -math.inf
        )
        dx_da = torch.exp(_log_phi(a) - _log_phi(x) + log_upper - log_z)
        dx_db = torch.exp(_log_phi(b) - _log_phi(x) + log_lower - log_z)
        dx_da = torch.nan_to_num(dx_da, nan=0.0)
        dx_db = torch.nan_to_num(dx_db, nan=0.0)
        # Back to the caller's frame: x -> -x swaps (a, b) with (-beta, -alpha).
        x = torch.where(flip, -x, x)
        dx_dalpha = torch.where(flip, dx_db, dx_da)
        dx_dbeta = torch.where(flip, dx_da, dx_db)
        return x, dx_dalpha, dx_dbeta

    def icdf(self, value):
        dtype = self.loc.dtype
        with torch.no_grad():
            x, dx_dalpha, dx_dbeta = self._standard_icdf(value)
        (_, low_finite, alpha), (_, high_finite, beta) = self._standardized_bounds()
        alpha = torch.where(low_finite, alpha, torch.zeros_like(alpha))
        beta = torch.where(high_finite, beta, torch.zeros_like(beta))
        # First-order surrogate: value x, derivatives dx/dalpha and dx/dbeta.
        x = (
            x.to(dtype)
            + dx_dalpha.to(dtype) * (alpha - alpha.detach())
            + dx_dbeta.to(dtype) * (beta - beta.detach())
        )
        z = self.loc + self.scale * x
        return torch.maximum(torch.minimum(z, self.high), self.low)

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        u = torch.rand(shape, dtype=torch.float64, device=self.loc.device)
        return self.icdf(u)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        a, b, _ = self._frame()
        log_z = self._log_z(a, b).to(self.loc.dtype)
        x = (value - self.loc) / self.scale
        return _log_phi(x) - torch.log(self.scale) - log_z

    def cdf(self, value):
        a, b, flip = self._frame()
        x = ((value - self.loc) / self.scale).double()
        x = torch.where(flip, -x, x)
        log_z = self._log_z(a, b)
        below = torch.exp(
            _log_sub_exp(torch.special.log_ndtr(torch.clamp(x, a, b)), torch.special.log_ndtr(a))
            - log_z
        )
        return torch.where(flip, 1 - below, below).to(self.loc.dtype)

    def _moments(self):
        """Standardized mean m and variance v, in float64 (the tails cancel catastrophically)."""
        a, b, flip = self._frame()
        log_z = self._log_z(a, b)
        ra = torch.exp(_log_phi(a) - log_z)  # phi(a) / Z
        rb = torch.exp(_log_phi(b) - log_z)
        m = ra - rb
        a_ra = _finite_or_zero(a) * ra  # a * phi(a) -> 0 as a -> -inf
        b_rb = _finite_or_zero(b) * rb
        v = 1 + a_ra - b_rb - m * m
        return torch.where(flip, -m, m), v, log_z, a_ra - b_rb

    @property
    def mean(self):
        m, _, _, _ = self._moments()
        return self.loc + self.scale * m.to(self.loc.dtype)

    @property
    def variance(self):
        _, v, _, _ = self._moments()
        return self.scale.pow(2) * v.to(self.loc.dtype)

    def entropy(self):
        _, _, log_z, cross = self._moments()
        h = 0.5 * math.log(2 * math.pi * math.e) + log_z + 0.5 * cross
        return torch.log(self.scale) + h.to(self.loc.dtype)
