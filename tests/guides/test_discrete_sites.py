"""Discrete sites: per-call Binomial counts and masks, the posterior of enumerated sites, and
discrete families next to a joint Gaussian."""

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

import pyro_reparam as pr
from pyro_reparam.guides.joint import JacobianDelta


def binomial_model(n):
    p = pyro.sample("p", dist.Beta(2.0, 2.0))
    with pyro.plate("data", len(n)):
        k = pyro.sample("k", dist.Binomial(n, p))
        pyro.sample("y", dist.Normal(k, 1.0), obs=n / 2)


def test_binomial_total_count_is_the_models_at_each_call():
    guide = pr.AutoReparamGuide(binomial_model)
    guide(torch.tensor([40.0, 50.0, 60.0]))
    n = torch.tensor([2.0, 3.0, 4.0])
    site = poutine.trace(guide).get_trace(n).nodes["k"]
    assert torch.equal(site["fn"].total_count, n) and (site["value"] <= n).all()
    assert math.isfinite(Trace_ELBO().loss(binomial_model, guide, n))


def test_binomial_counts_follow_the_subsample_and_upstream_draws():
    def model(n):
        extra = pyro.sample("extra", dist.Poisson(3.0))
        with pyro.plate("data", len(n), subsample_size=2) as idx:
            k = pyro.sample("k", dist.Binomial(n[idx] + extra, 0.5))
            pyro.sample("y", dist.Normal(k, 1.0), obs=n[idx])

    n = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0])
    guide = pr.AutoReparamGuide(model)
    for _ in range(5):
        tr = poutine.trace(guide).get_trace(n)
        idx, extra = tr.nodes["data"]["value"], tr.nodes["extra"]["value"]
        assert torch.equal(tr.nodes["k"]["fn"].total_count, n[idx] + extra)
    plan = pr.route(model, guide, n)
    assert plan["k"].estimator == "score"
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), plan.elbo())
    assert all(math.isfinite(svi.step(n)) for _ in range(3))


def test_a_masked_discrete_site_takes_the_models_mask():
    def model(mask):
        with pyro.plate("data", len(mask)), poutine.mask(mask=mask):
            z = pyro.sample("z", dist.Bernoulli(0.3))
            pyro.sample("x", dist.Normal(z, 1.0), obs=torch.zeros(len(mask)))

    guide = pr.AutoReparamGuide(model)
    guide(torch.tensor([True, True, False]))
    mask = torch.tensor([False, True, True])
    tr = poutine.trace(guide).get_trace(mask)
    tr.compute_log_prob()
    log_q = tr.nodes["z"]["log_prob"]
    assert log_q[0] == 0 and (log_q[1:] != 0).all()


PI, SHIFT = 0.3, 2.5


def mixture(x):
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Bernoulli(PI))
        pyro.sample("x", dist.Normal(loc + SHIFT * z, 1.0), obs=x)


def test_discrete_posterior_is_the_closed_form_of_a_two_component_mixture():
    """Given ``loc``, ``p(z_n = 1 | x_n) = PI N(x_n; loc + SHIFT) / (PI N(x_n; loc + SHIFT)
    + (1 - PI) N(x_n; loc))``; with ``loc`` a point mass one draw is exact."""
    x = torch.tensor([-1.0, 0.2, 1.3, 2.4, 3.8])
    guide = pr.AutoReparamGuide(mixture, families={"loc": "delta"}, discrete="enumerate")
    guide(x)
    pyro.get_param_store()["AutoReparamGuide.loc.loc"] = torch.tensor(0.4)
    one = PI * dist.Normal(0.4 + SHIFT, 1.0).log_prob(x).exp()
    zero = (1 - PI) * dist.Normal(0.4, 1.0).log_prob(x).exp()
    probs = guide.discrete_posterior(x, num_samples=1)["z"]
    assert probs.shape == (5, 2)
    assert torch.allclose(probs[:, 1], one / (one + zero), atol=1e-6)
    assert torch.allclose(probs.sum(-1), torch.ones(5))


def test_discrete_posterior_averages_over_the_continuous_guide():
    """``E_q(loc) p(z | x, loc)`` with ``q(loc) = N(m, s)``, against quadrature."""
    x = torch.tensor([0.5, 1.5])
    guide = pr.AutoReparamGuide(mixture, discrete="enumerate")
    guide(x)
    store = pyro.get_param_store()
    store["AutoReparamGuide.loc.loc"], store["AutoReparamGuide.loc.scale"] = (
        torch.tensor(0.2),
        torch.tensor(0.5),
    )
    grid = torch.linspace(-4, 4, 2001) * 0.5 + 0.2
    w = dist.Normal(0.2, 0.5).log_prob(grid).exp()
    one = PI * dist.Normal(grid[:, None] + SHIFT, 1.0).log_prob(x).exp()
    zero = (1 - PI) * dist.Normal(grid[:, None], 1.0).log_prob(x).exp()
    exact = (w[:, None] * one / (one + zero)).sum(0) / w.sum()
    pyro.set_rng_seed(0)
    probs = guide.discrete_posterior(x, num_samples=400)["z"][:, 1]
    assert torch.allclose(probs, exact, atol=0.02)


def test_discrete_posterior_needs_an_enumerable_site():
    def m():
        pyro.sample("k", dist.Poisson(2.0))

    with pytest.raises(ValueError, match="no enumerable discrete site"):
        pr.AutoReparamGuide(m).discrete_posterior()


@pytest.mark.parametrize("continuous", ["lowrank", "fullrank"])
@pytest.mark.parametrize("discrete", ["enumerate", "score"])
def test_joint_gaussian_next_to_discrete_sites(continuous, discrete):
    x = torch.tensor([-0.5, 0.3, 2.9, 3.1])

    def model(x):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        scale = pyro.sample("scale", dist.LogNormal(0.0, 0.5))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(loc + SHIFT * z, scale), obs=x)

    guide = pr.AutoReparamGuide(model, continuous=continuous, discrete=discrete)
    plan = pr.route(model, guide, x)
    assert set(plan.sites) == {"loc", "scale", "z"}  # the auxiliary latent is not routed
    assert plan["z"].estimator == discrete and plan["scale"].estimator == "pathwise"
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), plan.elbo())
    assert all(math.isfinite(svi.step(x)) for _ in range(3))
    tr = poutine.trace(guide).get_trace(x)
    assert tr.nodes["_AutoReparamGuide_latent"]["infer"]["is_auxiliary"]
    assert isinstance(tr.nodes["scale"]["fn"], JacobianDelta)


def test_route_keeps_the_closed_form_kl_for_mean_field_but_not_through_a_jacobian():
    """A joint site is a point mass carrying log|det du/dz|, which Pyro's KL(Delta || p) would
    drop: routed, its loss is Trace_ELBO's, draw for draw."""

    def normal():
        pyro.sample("a", dist.Normal(0.0, 1.0).expand([2]).to_event(1))

    def model():
        pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.sample("b", dist.LogNormal(0.0, 1.0).expand([2]).to_event(1))

    assert pr.route(normal, pr.AutoReparamGuide(normal)).elbo_class == "TraceMeanField_ELBO"
    pyro.clear_param_store()
    joint = pr.AutoReparamGuide(model, continuous="lowrank")
    plan = pr.route(model, joint)
    assert plan.elbo_class == "Trace_ELBO"
    pyro.set_rng_seed(5)
    routed = plan.elbo().loss(model, joint)
    pyro.set_rng_seed(5)
    assert routed == Trace_ELBO().loss(model, joint)
