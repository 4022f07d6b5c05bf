"""On 20 seeds of a small regression and of a mixed discrete/continuous model, AutoReparamGuide
reaches the posterior AutoNormal reaches, and both reach the closed form.

The 20 seeds are 20 independent replicates in one vectorized fit (a plate ``rep`` of size 20,
one data set per seed): Adam's updates are elementwise, so this is 20 fits in the time of one.
Tolerances come from the spread across seeds.
"""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from pyro.infer.autoguide import AutoDiscreteParallel, AutoGuideList, AutoNormal

import pyro_reparam as pr

R, N, D, NOISE = 20, 8, 2, 0.5
STEPS, PARTICLES = 250, 4


def _optim():
    return pyro.optim.ClippedAdam({"lr": 0.3, "lrd": 0.985, "clip_norm": 1e6})


def regression(x, y):
    """``w_r ~ N(0, I)``, ``y_rn ~ N(x_rn . w_r, NOISE^2)``, one replicate ``r`` per seed."""
    with pyro.plate("rep", R, dim=-2):
        w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([D]).to_event(1))
        with pyro.plate("data", N, dim=-1):
            pyro.sample("y", dist.Normal((x * w).sum(-1), NOISE), obs=y)


def _regression_data():
    xs, ys = [], []
    for seed in range(R):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(N, D, generator=g)
        w = torch.randn(D, generator=g)
        xs.append(x)
        ys.append(x @ w + NOISE * torch.randn(N, generator=g))
    return torch.stack(xs), torch.stack(ys)


def _regression_exact(x, y):
    """The posterior mean, and the mean-field optimum's scales ``1 / sqrt(diag precision)``."""
    precision = torch.eye(D) + x.mT @ x / NOISE**2
    mean = torch.linalg.solve(precision, (x.mT @ y.unsqueeze(-1)) / NOISE**2).squeeze(-1)
    return mean, precision.diagonal(dim1=-2, dim2=-1).rsqrt()


def _elbo(cls, plates):
    return cls(max_plate_nesting=plates, num_particles=PARTICLES, vectorize_particles=True)


def _fit(model, guide, elbo, *args):
    svi = SVI(model, guide, _optim(), elbo)
    for _ in range(STEPS):
        svi.step(*args)


def _agree(ours, theirs):
    """Per-seed errors, in posterior sds, of two independent fits: each scatters well within a
    posterior sd with a mean indistinguishable from zero, and their paired difference has mean
    zero within its standard error across seeds."""
    for e in (ours, theirs):
        assert e.std() < 0.2, e
        assert e.mean().abs() < 4 * e.std() / e.numel() ** 0.5, e
    d = ours - theirs
    assert d.mean().abs() < 4 * d.std() / d.numel() ** 0.5, d


def test_regression_twenty_seeds():
    x, y = _regression_data()
    mean, sd = _regression_exact(x, y)
    fitted = {}
    for seed, cls in enumerate((AutoNormal, pr.AutoReparamGuide)):
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        guide = cls(regression)
        _fit(regression, guide, _elbo(Trace_ELBO, 2), x, y)
        loc = guide.median()["w"].squeeze(-2)
        q = guide.quantiles([0.8413447])["w"][0].squeeze(-2)  # loc + 1 sd
        fitted[cls] = ((loc - mean) / sd, (q - loc) / sd - 1)
    (loc_ours, scale_ours), (loc_theirs, scale_theirs) = (
        fitted[pr.AutoReparamGuide],
        fitted[AutoNormal],
    )
    _agree(loc_ours, loc_theirs)
    _agree(scale_ours, scale_theirs)


PI, SHIFT, M = 0.4, 3.0, 10


def mixture(x):
    """``mu_r ~ N(0, 1)``, ``z_rn ~ Bernoulli(PI)``, ``x_rn ~ N(mu_r + SHIFT z_rn, 1)``."""
    with pyro.plate("rep", R, dim=-2):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", M, dim=-1):
            z = pyro.sample("z", dist.Bernoulli(PI))
            pyro.sample("x", dist.Normal(mu + SHIFT * z, 1.0), obs=x)


def _mixture_data():
    rows = []
    for seed in range(R):
        g = torch.Generator().manual_seed(100 + seed)
        mu = torch.randn((), generator=g)
        z = (torch.rand(M, generator=g) < PI).float()
        rows.append(mu + SHIFT * z + torch.randn(M, generator=g))
    return torch.stack(rows)


def _mixture_cavi(x, iters=200):
    """The mean-field optimum ``q(mu) = N(m, 1 / (1 + M))``, ``q(z_n) = Bernoulli(r_n)`` by
    coordinate ascent: ``m = sum_n (x_n - SHIFT r_n) / (1 + M)``,
    ``logit r_n = logit PI + SHIFT (x_n - m) - SHIFT^2 / 2``."""
    m = torch.zeros(R, 1)
    logit_pi = torch.tensor(PI / (1 - PI)).log()
    for _ in range(iters):
        r = torch.sigmoid(logit_pi + SHIFT * (x - m) - SHIFT**2 / 2)
        m = (x - SHIFT * r).sum(-1, keepdim=True) / (1 + M)
    return m.squeeze(-1), (1 + M) ** -0.5, r


def test_mixture_twenty_seeds():
    """Guide-side enumeration of ``z``: AutoReparamGuide(discrete="enumerate") against AutoNormal
    for ``mu`` next to AutoDiscreteParallel for ``z`` (the same mean-field family)."""
    x = _mixture_data()
    m, sd, r = _mixture_cavi(x)
    pyro.clear_param_store()
    ours = pr.AutoReparamGuide(mixture, discrete="enumerate")
    _fit(mixture, ours, _elbo(TraceEnum_ELBO, 2), x)
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    theirs = AutoGuideList(mixture)
    theirs.append(AutoNormal(poutine.block(mixture, hide=["z"])))
    theirs.append(AutoDiscreteParallel(poutine.block(mixture, expose=["z"])))
    _fit(mixture, theirs, _elbo(TraceEnum_ELBO, 2), x)
    summaries = []
    for guide in (ours, theirs[0]):
        loc = guide.median(x)["mu"].squeeze(-1)
        q = guide.quantiles([0.8413447], x)["mu"][0].squeeze(-1)
        summaries.append(((loc - m) / sd, (q - loc) / sd - 1))
    _agree(summaries[0][0], summaries[1][0])
    _agree(summaries[0][1], summaries[1][1])
    probs = torch.sigmoid(ours.z.logits)
    assert (probs - r).abs().max() < 0.05


@pytest.mark.parametrize("continuous", ["fullrank", "lowrank"])
def test_joint_gaussian_recovers_the_exact_covariance(continuous):
    """One replicate (D = 2, rank 1 spans it up to a diagonal): the joint family is exact."""
    x, y = (t[0] for t in _regression_data())

    def model(x, y):
        w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([D]).to_event(1))
        with pyro.plate("data", N):
            pyro.sample("y", dist.Normal((x * w).sum(-1), NOISE), obs=y)

    precision = torch.eye(D) + x.T @ x / NOISE**2
    cov = torch.linalg.inv(precision)
    mean = cov @ x.T @ y / NOISE**2
    rank = {"rank": 1} if continuous == "lowrank" else {}
    guide = pr.AutoReparamGuide(model, continuous=continuous, **rank)
    _fit(model, guide, _elbo(Trace_ELBO, 1), x, y)
    posterior = guide._joint.posterior()
    sd = cov.diagonal().sqrt()
    assert ((posterior.mean - mean).abs() / sd).max() < 0.15
    fitted = posterior.covariance_matrix.detach()
    corr = cov[0, 1] / (sd[0] * sd[1])
    assert fitted[0, 1] / fitted.diagonal().prod().sqrt() == pytest.approx(corr.item(), abs=0.1)
    assert torch.allclose(fitted.diagonal().sqrt(), sd, rtol=0.15)
