"""Custom distributions: samples agree with log_prob, densities normalize, gradients are right."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.testing.gof import auto_goodness_of_fit
from torch.distributions.transforms import AffineTransform, ExpTransform

from pyro_reparam.distributions import (
    InverseCDF,
    Kumaraswamy,
    Rayleigh,
    Reparameterized,
    ScoreFunction,
    TruncatedNormal,
)

GOF_FAILURE_RATE = 1e-3
T = torch.tensor


def _reparameterized(loc, scale):
    noise = dist.Normal(T(0.0, dtype=loc.dtype), T(1.0, dtype=loc.dtype))
    return Reparameterized(noise, [AffineTransform(loc, scale), ExpTransform()])


# name -> (constructor taking float64 parameter tensors, parameter values, support grid)
CASES = {
    "rayleigh": (lambda s: Rayleigh(s), [1.3], (0.0, 12.0)),
    "kumaraswamy": (lambda a, b: Kumaraswamy(a, b), [2.0, 3.5], (0.0, 1.0)),
    "kumaraswamy_u": (lambda a, b: Kumaraswamy(a, b), [0.7, 0.8], (0.0, 1.0)),
    "truncnorm_mid": (lambda m, s: TruncatedNormal(m, s, -1.0, 2.0), [0.3, 1.5], (-1.0, 2.0)),
    "truncnorm_tail": (lambda m, s: TruncatedNormal(m, s, 8.0, 30.0), [0.0, 1.0], (8.0, 30.0)),
    "truncnorm_left": (lambda m, s: TruncatedNormal(m, s, -30.0, -9.0), [0.5, 1.1], (-30.0, -9.0)),
    "truncnorm_half": (
        lambda m, s: TruncatedNormal(m, s, 0.5, math.inf),
        [1.0, 0.7],
        (0.5, 12.0),
    ),
    "inverse_cdf_laplace": (lambda m, s: InverseCDF(dist.Laplace(m, s)), [0.5, 2.0], (-60, 60)),
    "inverse_cdf_gumbel": (lambda m, s: InverseCDF(dist.Gumbel(m, s)), [0.5, 1.5], (-15, 60)),
    "reparameterized_lognormal": (_reparameterized, [0.1, 0.4], (0.0, 20.0)),
}


def _make(name, requires_grad=False):
    ctor, values, _ = CASES[name]
    params = [T(v, dtype=torch.float64, requires_grad=requires_grad) for v in values]
    return ctor(*params), params


@pytest.mark.parametrize("name", sorted(CASES))
def test_samples_agree_with_log_prob(name):
    d, _ = _make(name)
    samples = d.sample((20000,))
    probs = d.log_prob(samples).exp()
    gof = auto_goodness_of_fit(samples, probs)
    assert gof > GOF_FAILURE_RATE


@pytest.mark.parametrize("name", sorted(CASES))
def test_density_integrates_to_one(name):
    d, _ = _make(name)
    lo, hi = CASES[name][2]
    eps = 1e-9 * (hi - lo)
    x = torch.linspace(lo + eps, hi - eps, 400001, dtype=torch.float64)
    mass = torch.trapezoid(d.log_prob(x).exp(), x).item()
    assert mass == pytest.approx(1.0, abs=2e-3)


def test_goodness_of_fit_detects_a_wrong_sampler():
    """The GOF check above can fail: samples from a different scale are rejected."""
    d = Rayleigh(T(1.3, dtype=torch.float64))
    wrong = Rayleigh(T(1.5, dtype=torch.float64)).sample((20000,))
    assert auto_goodness_of_fit(wrong, d.log_prob(wrong).exp()) < GOF_FAILURE_RATE


def _moment_grads_mc(name, power, n=200_000):
    """Per-sample pathwise derivatives of z**power: mean and standard error, per parameter."""
    ctor, values, _ = CASES[name]
    params = [T(v, dtype=torch.float64).expand(n).clone().requires_grad_() for v in values]
    z = ctor(*params).rsample()
    grads = torch.autograd.grad(z.pow(power).sum(), params)
    return [(g.mean().item(), g.std().item() / math.sqrt(n)) for g in grads]


def _exact_moment(name, power):
    d, params = _make(name, requires_grad=True)
    if name == "reparameterized_lognormal":
        m, s = params
        value = torch.exp(power * m + 0.5 * (power * s) ** 2)
    else:
        value = d.mean if power == 1 else d.variance + d.mean**2
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return [0.0 if g is None else g.item() for g in grads]


@pytest.mark.parametrize("power", [1, 2])
@pytest.mark.parametrize("name", sorted(CASES))
def test_rsample_gradient_matches_closed_form_moments(name, power):
    pyro.set_rng_seed(1)
    exact = _exact_moment(name, power)
    for (mean, se), want in zip(_moment_grads_mc(name, power), exact, strict=True):
        assert abs(mean - want) < 4 * se + 1e-9, (mean, se, want)


@pytest.mark.parametrize("name", sorted(CASES))
def test_rsample_gradient_matches_finite_differences(name):
    """d/dtheta of the Monte Carlo estimate with common random numbers."""
    ctor, values, _ = CASES[name]
    n, h = 2000, 1e-6

    def estimate(vals):
        pyro.set_rng_seed(7)
        z = ctor(*vals).rsample((n,))
        return torch.sin(z).mean()

    params = [T(v, dtype=torch.float64, requires_grad=True) for v in values]
    grads = torch.autograd.grad(estimate(params), params)
    for i, g in enumerate(grads):
        up = [T(v + (h if j == i else 0.0), dtype=torch.float64) for j, v in enumerate(values)]
        dn = [T(v - (h if j == i else 0.0), dtype=torch.float64) for j, v in enumerate(values)]
        fd = (estimate(up) - estimate(dn)) / (2 * h)
        assert g.item() == pytest.approx(fd.item(), rel=1e-4, abs=1e-6)


def test_broken_gradient_is_detected():
    """The moment check can fail: a sampler that drops d/dscale is rejected."""
    n = 100_000
    scale = T(1.3, dtype=torch.float64).expand(n).clone().requires_grad_()
    z = Rayleigh(scale.detach()).rsample() * scale / scale.detach()  # correct value
    wrong = Rayleigh(scale.detach()).rsample() + 0 * scale  # no gradient path
    (g_ok,) = torch.autograd.grad(z.sum(), scale)
    (g_bad,) = torch.autograd.grad(wrong.sum(), scale)
    want = math.sqrt(math.pi / 2)
    se = g_ok.std().item() / math.sqrt(n)
    assert abs(g_ok.mean().item() - want) < 4 * se
    assert abs(g_bad.mean().item() - want) > 4 * se


@pytest.mark.parametrize("low", [8.0, 15.0, 30.0])
def test_truncated_normal_far_tail_is_finite_and_accurate(low):
    high = low + 0.5
    for dtype in (torch.float32, torch.float64):
        loc = T(0.0, dtype=dtype, requires_grad=True)
        d = TruncatedNormal(loc, T(1.0, dtype=dtype), T(low, dtype=dtype), T(high, dtype=dtype))
        z = d.rsample((50000,))
        assert torch.isfinite(z).all() and (z >= low).all() and (z <= high).all()
        assert torch.isfinite(d.log_prob(z)).all()
        (g,) = torch.autograd.grad(z.mean(), loc)
        assert torch.isfinite(g)
        # Standardized tail moments: mean ~ low + 1/low, sd ~ 1/low (exact values from mean/var).
        se = d.variance.sqrt().item() / math.sqrt(50000)
        assert abs(z.mean().item() - d.mean.item()) < 5 * se + 1e-6
        assert z.var().item() == pytest.approx(d.variance.item(), rel=0.05)
        assert d.mean.item() == pytest.approx(low + 1 / low, rel=1e-2)


def test_truncated_normal_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    loc, scale, low, high = 0.4, 1.7, -0.5, 3.0
    d = TruncatedNormal(T(loc), T(scale), T(low), T(high))
    ref = scipy_stats.truncnorm((low - loc) / scale, (high - loc) / scale, loc=loc, scale=scale)
    x = np.linspace(-0.4, 2.9, 7)
    np.testing.assert_allclose(d.log_prob(T(x).float()).numpy(), ref.logpdf(x), rtol=1e-4)
    assert d.mean.item() == pytest.approx(ref.mean(), rel=1e-5)
    assert d.variance.item() == pytest.approx(ref.var(), rel=1e-4)
    assert d.entropy().item() == pytest.approx(ref.entropy(), rel=1e-4)
    np.testing.assert_allclose(d.cdf(T(x).float()).numpy(), ref.cdf(x), atol=1e-5)


@pytest.mark.parametrize(
    "make,param",
    [
        (lambda: Rayleigh(T(-1.0)), "scale"),
        (lambda: Kumaraswamy(T(0.0), T(1.0)), "a"),
        (lambda: Kumaraswamy(T(1.0), T(-2.0)), "b"),
        (lambda: TruncatedNormal(T(0.0), T(-1.0), T(0.0), T(1.0)), "scale"),
        (lambda: TruncatedNormal(T(0.0), T(1.0), T(2.0), T(1.0)), "low"),
        (lambda: InverseCDF(dist.Bernoulli(0.5)), "base"),
        (lambda: Reparameterized(dist.Normal(0.0, 1.0), "exp"), "transform"),
        (
            lambda: Reparameterized(dist.Normal(T(0.0, requires_grad=True), 1.0), ExpTransform()),
            "noise",
        ),
    ],
)
def test_invalid_parameters_name_the_parameter(make, param):
    with pytest.raises((ValueError, TypeError), match=param):
        make()


@pytest.mark.parametrize("name", sorted(CASES))
def test_shapes_expand_to_event_and_plate(name):
    d, _ = _make(name)
    e = d.expand((3, 2))
    assert e.batch_shape == (3, 2)
    assert e.sample((5,)).shape == (5, 3, 2)
    assert e.log_prob(e.sample()).shape == (3, 2)
    ind = e.to_event(1)
    assert ind.batch_shape == (3,) and ind.event_shape == (2,)
    assert ind.log_prob(ind.sample()).shape == (3,)

    def model():
        with pyro.plate("data", 4):
            return pyro.sample("z", d)

    tr = pyro.poutine.trace(model).get_trace()
    assert tr.nodes["z"]["value"].shape == (4,)
    tr.compute_log_prob()
    assert tr.nodes["z"]["log_prob"].shape == (4,)


def test_score_function_wrapper_does_not_mutate_base():
    base = dist.Normal(T(0.0), T(1.0))
    wrapped = ScoreFunction(base)
    assert base.has_rsample and not wrapped.has_rsample
    loc = T(0.5, requires_grad=True)
    z = ScoreFunction(dist.Normal(loc, 1.0)).sample((10,))
    assert not z.requires_grad
    assert wrapped.expand((3,)).batch_shape == (3,)
    assert torch.equal(wrapped.log_prob(T(0.3)), base.log_prob(T(0.3)))


@pytest.mark.parametrize("bad", [{"loc": math.inf}, {"loc": math.nan}, {"scale": math.inf}])
def test_truncated_normal_refuses_infinite_parameters(bad):
    args = {"loc": 0.0, "scale": 1.0} | bad
    name = next(iter(bad))
    with pytest.raises(ValueError, match=f"parameter {name} must be"):
        TruncatedNormal(args["loc"], args["scale"], -1.0, 1.0)
