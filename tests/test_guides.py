"""AutoReparamGuide fits a mixed continuous/discrete model to its exact posterior."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Predictive
from pyro.optim import ClippedAdam

import pyro_reparam as pr

N = 12
PRIOR_Z = 0.4
SHIFT = 4.0


def _data():
    g = torch.Generator().manual_seed(3)
    return torch.randn(N, generator=g) + 0.3 + SHIFT  # generated with z = 1, mu = 0.3


def model(x):
    z = pyro.sample("z", dist.Bernoulli(PRIOR_Z))
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu + SHIFT * z, 1.0), obs=x)


def exact_posterior(x):
    """p(z | x) and the moments of p(mu | x, z) (Normal-Normal conjugacy)."""
    post = {}
    log_w = []
    for z in (0.0, 1.0):
        r = x - SHIFT * z
        var = 1.0 / (1.0 + N)
        mean = var * r.sum().item()
        # log marginal likelihood of r under mu ~ N(0, 1), r_i ~ N(mu, 1)
        cov = torch.eye(N) + torch.ones(N, N)
        lml = dist.MultivariateNormal(torch.zeros(N), cov).log_prob(r).item()
        prior = math.log(PRIOR_Z if z else 1 - PRIOR_Z)
        log_w.append(lml + prior)
        post[z] = (mean, math.sqrt(var))
    p1 = 1 / (1 + math.exp(log_w[0] - log_w[1]))
    return p1, post


@pytest.mark.parametrize("discrete", ["enumerate", "score"])
def test_fits_exact_posterior(discrete):
    pyro.set_rng_seed(0)
    x = _data()
    guide = pr.AutoReparamGuide(model, discrete=discrete)
    plan = pr.route(model, guide, x, enumerate="auto" if discrete == "enumerate" else "never")
    assert plan["z"].estimator == ("enumerate" if discrete == "enumerate" else "score")
    assert plan["mu"].estimator == "pathwise"
    svi = SVI(model, guide, ClippedAdam({"lr": 0.05, "lrd": 0.997}), plan.elbo())
    for _ in range(1500):
        svi.step(x)
    p1, post = exact_posterior(x)
    assert p1 > 0.95  # the data clearly come from z = 1: mean-field is then near-exact
    q_logit = pyro.param("AutoReparamGuide.z.logits").item()
    q1 = 1 / (1 + math.exp(-q_logit))
    assert abs(q1 - p1) < 0.03
    mean, sd = post[1.0]
    assert abs(pyro.param("AutoReparamGuide.mu.loc").item() - mean) < 0.1
    assert pyro.param("AutoReparamGuide.mu.scale").item() == pytest.approx(sd, rel=0.2)


def test_predictive_and_families():
    x = _data()
    guide = pr.AutoReparamGuide(model, families={"mu": "laplace"})
    guide(x)
    draws = Predictive(model, guide=guide, num_samples=20)(x)
    assert draws["z"].shape[0] == 20 and draws["mu"].shape[0] == 20
    with pytest.raises(ValueError, match="does not sample"):
        pr.AutoReparamGuide(model, families={"nope": "normal"})(x)
    with pytest.raises(ValueError, match="choose one of"):
        pr.AutoReparamGuide(model, families={"mu": "cauchy"})
    with pytest.raises(ValueError, match="discrete must be"):
        pr.AutoReparamGuide(model, discrete="magic")


def test_relaxed_bernoulli_is_pathwise_and_biased():
    x = _data()
    guide = pr.AutoReparamGuide(model, discrete="relaxed")
    plan = pr.route(model, guide, x)
    assert plan["z"].estimator == "relaxed" and plan["z"].biased


def test_constrained_and_plated_sites():
    def m(x):
        s = pyro.sample("s", dist.Gamma(2.0, 2.0))
        p = pyro.sample("p", dist.Beta(2.0, 2.0))
        with pyro.plate("data", len(x), subsample_size=4):
            c = pyro.sample("c", dist.Poisson(3.0))
            pyro.sample("obs", dist.Normal(c * p, s), obs=x[:4])

    x = torch.arange(10.0)
    guide = pr.AutoReparamGuide(m, families={"p": "kumaraswamy"})
    tr = pyro.poutine.trace(guide).get_trace(x)
    assert tr.nodes["s"]["value"] > 0
    assert 0 < tr.nodes["p"]["value"] < 1
    assert tr.nodes["c"]["value"].shape == (4,)
    assert pyro.param("AutoReparamGuide.c.log_rate").shape == (10,)


def test_vector_valued_constrained_site_stays_in_its_support():
    """A site with support independent(positive, 1) must go through its bijection."""

    def m():
        pyro.sample("rates", dist.Gamma(torch.ones(3), 1.0).to_event(1))

    guide = pr.AutoReparamGuide(m)
    guide()
    pyro.get_param_store()["AutoReparamGuide.rates.loc"] = torch.full((3,), -5.0)
    value = pyro.poutine.trace(guide).get_trace().nodes["rates"]["value"]
    assert value.shape == (3,) and (value > 0).all()
