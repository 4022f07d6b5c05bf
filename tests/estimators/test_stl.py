"""STL_ELBO on conjugate Gaussian models run as N independent copies (see test_dreg.py):
unbiased against Trace_ELBO, and zero variance at the exact posterior."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from test_dreg import N, X, draws, guide, hier_guide, hier_model, model

from pyro_reparam.estimators import STL_ELBO


def assert_same_mean(a, b):
    diff = a.mean(0) - b.mean(0)
    se = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt()
    assert (4 * se).norm() < 0.25 * b.mean(0).norm(), (se, b.mean(0))
    assert (diff.abs() <= 4 * se).all(), (a.mean(0), b.mean(0), se)


@pytest.mark.parametrize("hierarchical", [False, True])
def test_unbiased_against_trace_elbo(hierarchical):
    fns = dict(model=hier_model, guide=hier_guide) if hierarchical else {}
    _, stl = draws(STL_ELBO(), seed=1, **fns)
    _, plain = draws(pyro.infer.Trace_ELBO(), seed=2, **fns)
    assert_same_mean(stl, plain)


def exact_guide(n=N):
    mu = pyro.param("mu", torch.full((n,), (X + 0.3) / 2))  # p(z | x) = N(0.65, 1/2)
    s = pyro.param("s", torch.full((n,), 0.5 * math.log(0.5)))
    with pyro.plate("copies", n):
        pyro.sample("z", dist.Normal(mu, s.exp()))


@pytest.mark.parametrize("vectorize", [False, True])
def test_zero_variance_at_the_exact_posterior(vectorize):
    elbo = STL_ELBO(num_particles=3, vectorize_particles=vectorize)
    loss, stl = draws(elbo, names=("mu", "s"), guide=exact_guide)
    _, plain = draws(pyro.infer.Trace_ELBO(), names=("mu", "s"), guide=exact_guide)
    assert stl.abs().max() < 1e-5
    assert plain.var(0).min() > 0.1  # Trace_ELBO's draws scatter around the same zero mean
    log_evidence = dist.Normal(0.3, 2**0.5).log_prob(torch.tensor(X)).item()
    assert loss == pytest.approx(-N * log_evidence, rel=1e-4)


def test_loss_and_model_gradient_are_trace_elbo_draw_for_draw():
    loss_s, stl = draws(STL_ELBO(), seed=3)
    loss_p, plain = draws(pyro.infer.Trace_ELBO(), seed=3)
    assert loss_s == pytest.approx(loss_p, rel=1e-6)
    torch.testing.assert_close(stl[:, 2], plain[:, 2])


def test_per_site_choice_and_conventions(loss_agrees, svi_steps):
    _, only_z = draws(STL_ELBO(sites=["z"]), seed=4, model=hier_model, guide=hier_guide)
    _, both = draws(STL_ELBO(), seed=4, model=hier_model, guide=hier_guide)
    assert not torch.allclose(only_z[:, :2], both[:, :2])
    with pytest.raises(ValueError, match="not fully reparameterized"):
        draws(STL_ELBO(sites=["nope"]))
    pyro.clear_param_store()
    elbo = STL_ELBO()
    loss_agrees(elbo, model, guide, 4, seed=5)
    svi_steps(elbo, model, guide, 4)
