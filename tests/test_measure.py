"""The measuring instrument matches closed-form gradient variances, and can tell them apart.

z ~ N(mu, 1) at mu = 0, f(z) = (z - k)^2, a = mu - k. Per-draw mu-gradient of E[f]:
pathwise 2 (z - k) (variance 4); score function f(z) (z - mu) (variance a^4 + 14 a^2 + 15);
with the constant baseline E[f] = a^2 + 1, (f(z) - E f) (z - mu) (variance 8 a^2 + 10).
"""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

import pyro_reparam as pr
from pyro_reparam.distributions import ScoreFunction

K = 2.0
A = -K
NUM_DRAWS = 3000


def _model_pathwise():
    mu = pyro.param("mu", torch.tensor(0.0))
    z = pyro.sample("z", dist.Normal(mu, 1.0))  # log p - log q == 0 for every z and mu
    pyro.factor("f", -((z - K) ** 2))


def _guide_pathwise():
    pyro.sample("z", dist.Normal(pyro.param("mu", torch.tensor(0.0)), 1.0))


def _model_score():
    mu = pyro.param("mu", torch.tensor(0.0)).detach()
    z = pyro.sample("z", dist.Normal(mu, 1.0))
    pyro.factor("f", -((z - K) ** 2))


def _guide_score(baseline_value=None):
    infer = {"baseline": {"baseline_value": baseline_value}} if baseline_value is not None else {}
    mu = pyro.param("mu", torch.tensor(0.0))
    pyro.sample("z", ScoreFunction(dist.Normal(mu, 1.0)), infer=infer)


def _variance_se(samples_fn, n_draws):
    """Monte Carlo standard error of a sample variance from n_draws draws of g."""
    rng = np.random.default_rng(0)
    g = samples_fn(rng.standard_normal(2_000_000))
    c = (g - g.mean()) ** 2
    return math.sqrt(c.var() / n_draws)


CASES = {
    "pathwise": (4.0, lambda e: 2 * (e - K), _model_pathwise, _guide_pathwise, "none"),
    "score": (
        A**4 + 14 * A**2 + 15,
        lambda e: (e - K) ** 2 * e,
        _model_score,
        _guide_score,
        "none",
    ),
    "score_const_baseline": (
        8 * A**2 + 10,
        lambda e: ((e - K) ** 2 - (A**2 + 1)) * e,
        _model_score,
        lambda: _guide_score(baseline_value=-(A**2 + 1)),
        "none",
    ),
}


def _measure(name):
    _, _, model, guide, baseline = CASES[name]
    elbo = pr.ScoreFunctionELBO(baseline=baseline)
    stats = pr.gradient_variance(model, guide, elbo, num_draws=NUM_DRAWS, params=["mu"])
    return stats.params["mu"].variance.item()


@pytest.mark.parametrize("name", sorted(CASES))
def test_measured_variance_matches_closed_form(name):
    pyro.set_rng_seed(123)
    exact, g_of_eps = CASES[name][:2]
    se = _variance_se(g_of_eps, NUM_DRAWS)
    measured = _measure(name)
    assert abs(measured - exact) < 4 * se, (measured, exact, se)
    # The check discriminates: every other closed form is far outside the tolerance.
    for other, (other_exact, *_rest) in CASES.items():
        if other != name:
            assert abs(measured - other_exact) > 4 * se, (name, other, measured)


def test_snr_and_relative_variance_totals():
    pyro.set_rng_seed(0)
    stats = pr.gradient_variance(
        _model_pathwise, _guide_pathwise, pr.ScoreFunctionELBO(baseline="none"), num_draws=500
    )
    p = stats.params["mu"]
    # E[grad of -ELBO] = E[2 (z - k)] = -2k at mu = 0.
    assert abs(p.mean.item() - (-2 * K)) < 4 * p.standard_error.item()
    assert stats.relative_variance == pytest.approx(stats.trace_cov / stats.mean_sq_norm)
    assert "relative variance" in str(stats)
    with pytest.raises(ValueError, match="num_draws"):
        pr.gradient_variance(_model_pathwise, _guide_pathwise, pyro.infer.Trace_ELBO(), num_draws=1)
    with pytest.raises(ValueError, match="no parameter matched"):
        pr.gradient_variance(
            _model_pathwise, _guide_pathwise, pyro.infer.Trace_ELBO(), num_draws=2, params=["nope"]
        )


def test_batches_and_warmup_feed_each_draw_the_next_minibatch():
    """loss = -log N(x | mu, 1) has d/dmu = mu - x: exact per-batch gradients, no Monte Carlo."""

    def model(x):
        mu = pyro.param("mu", torch.tensor(0.0))
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)

    def guide(x):
        pass

    batches = [(torch.tensor(0.0),), (torch.tensor(2.0),)]
    stats = pr.gradient_variance(model, guide, Trace_ELBO(), num_draws=4, batches=batches)
    assert stats.params["mu"].mean.item() == pytest.approx(-1.0)
    assert stats.params["mu"].variance.item() == pytest.approx(4 / 3)  # values 0, -2, 0, -2
    stats = pr.gradient_variance(model, guide, Trace_ELBO(), num_draws=3, batches=batches, warmup=1)
    assert stats.params["mu"].mean.item() == pytest.approx(-4 / 3)  # draws see 2, 0, 2
    with pytest.raises(ValueError, match="either as \\*args or as `batches`"):
        pr.gradient_variance(model, guide, Trace_ELBO(), torch.tensor(1.0), batches=batches)
    with pytest.raises(ValueError, match="`batches` is empty"):
        pr.gradient_variance(model, guide, Trace_ELBO(), num_draws=2, batches=[])
