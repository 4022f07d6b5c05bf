"""Every estimator the router can choose (relaxations aside) is unbiased on exact problems.

Each problem has an ELBO computable exactly (closed form or a finite / truncated sum), whose
autograd gradient is the truth; the mean of N estimator draws must lie within 4 Monte Carlo
standard errors of it, and N is large enough that those 4 standard errors are small against the
gradient (at most a quarter of its norm), so that a biased estimator fails.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.testing.rejection_gamma import ShapeAugmentedGamma
from torch import nn

import pyro_reparam as pr
from pyro_reparam.distributions import ScoreFunction
from pyro_reparam.estimators import LeaveOneOut

X_CAT = torch.tensor([-1.0, 0.3, 2.0])
LOCS = torch.tensor([-1.5, 0.0, 1.5])
PRIOR = torch.tensor([0.2, 0.5, 0.3])


def cat_model():
    with pyro.plate("data", 3):
        z = pyro.sample("z", dist.Categorical(PRIOR))
        pyro.sample("x", dist.Normal(LOCS[z], 1.0), obs=X_CAT)


def cat_guide(baseline_net=None):
    logits = pyro.param("logits", torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.5, -0.5], [1.0, 0, 0]]))
    infer = {}
    if baseline_net is not None:
        infer = {"baseline": {"nn_baseline": baseline_net, "nn_baseline_input": X_CAT[:, None]}}
    with pyro.plate("data", 3):
        pyro.sample("z", dist.Categorical(logits=logits), infer=infer)


def cat_exact_elbo():
    logits = pyro.param("logits")
    q = torch.softmax(logits, -1)
    log_lik = dist.Normal(LOCS, 1.0).log_prob(X_CAT[:, None])  # (3 data, 3 values)
    return (q * (PRIOR.log() + log_lik - q.log())).sum()


X_POIS = torch.tensor(4.0)


def pois_model():
    z = pyro.sample("z", dist.Poisson(3.0))
    pyro.sample("x", dist.Normal(z, 2.0), obs=X_POIS)


def pois_guide():
    rate = pyro.param("log_rate", torch.tensor(0.3)).exp()  # the optimum is near 1.17
    pyro.sample("z", dist.Poisson(rate))


def pois_exact_elbo():
    rate = pyro.param("log_rate").exp()
    z = torch.arange(0.0, 80.0)  # the truncated mass beyond 80 is < 1e-40
    q = dist.Poisson(rate)
    log_q = q.log_prob(z)
    terms = dist.Poisson(3.0).log_prob(z) + dist.Normal(z, 2.0).log_prob(X_POIS) - log_q
    return (log_q.exp() * terms).sum()


X_GAUSS = torch.tensor(1.0)


def gauss_model():
    z = pyro.sample("z", dist.Normal(0.0, 2.0))
    pyro.sample("x", dist.Normal(z, 1.0), obs=X_GAUSS)


def gauss_guide(force_score=False):
    mu = pyro.param("mu", torch.tensor(-0.5))  # the optimum is (0.8, log 0.89)
    s = pyro.param("log_s", torch.tensor(-1.0)).exp()
    q = dist.Normal(mu, s)
    pyro.sample("z", ScoreFunction(q) if force_score else q)


def gauss_exact_elbo():
    mu, s = pyro.param("mu"), pyro.param("log_s").exp()
    prior = -math.log(2 * math.sqrt(2 * math.pi)) - (mu**2 + s**2) / 8
    lik = -0.5 * math.log(2 * math.pi) - ((X_GAUSS - mu) ** 2 + s**2) / 2
    entropy = 0.5 * torch.log(2 * math.pi * math.e * s**2)
    return prior + lik + entropy


X_GAMMA = torch.tensor(5.0)


def gamma_model():
    z = pyro.sample("z", dist.Gamma(3.0, 1.0))
    pyro.sample("x", dist.Poisson(z), obs=X_GAMMA)


def gamma_guide():
    """A partially reparameterized sampler: pathwise through the accepted proposal, plus the
    score of the accept step (Naesseth et al. 2017)."""
    a = pyro.param("alpha", torch.tensor(1.5), constraint=dist.constraints.positive)
    b = pyro.param("beta", torch.tensor(1.0), constraint=dist.constraints.positive)
    pyro.sample("z", ShapeAugmentedGamma(a, b, boost=1))


def gamma_exact_elbo():
    a, b = pyro.param("alpha"), pyro.param("beta")
    mean_log_z, mean_z = torch.digamma(a) - b.log(), a / b
    prior = 3.0 * math.log(1.0) - math.lgamma(3.0) + 2.0 * mean_log_z - mean_z
    lik = X_GAMMA * mean_log_z - mean_z - torch.lgamma(X_GAMMA + 1)
    entropy = a - b.log() + torch.lgamma(a) + (1 - a) * torch.digamma(a)
    return prior + lik + entropy


def _exact_grads(exact_elbo, model, guide):
    pyro.poutine.trace(guide).get_trace()  # create params
    names = [n for n in pyro.get_param_store() if not n.startswith("_pyro_reparam")]
    params = [pyro.get_param_store().get_param(n).unconstrained() for n in names]
    grads = torch.autograd.grad(-exact_elbo(), params)
    return dict(zip(names, grads, strict=True))


def _check_unbiased(model, guide, elbo, exact_elbo, num_draws, resolution=0.25):
    """The mean of ``num_draws`` gradients is within 4 standard errors of the exact gradient,
    and those 4 standard errors are below ``resolution`` times its norm."""
    exact = _exact_grads(exact_elbo, model, guide)
    stats = pr.gradient_variance(model, guide, elbo, num_draws=num_draws, params=list(exact))
    for name, want in exact.items():
        p = stats.params[name]
        tol = 4 * p.standard_error
        assert tol.norm() < resolution * want.norm(), (
            f"{name}: 4 standard errors ({tol.norm():.3g}) are not small against the gradient "
            f"({want.norm():.3g}): the check cannot see a bias; take more draws"
        )
        err = (p.mean - want.double()).abs()
        assert (err < tol + 1e-6).all(), (name, p.mean, want, p.standard_error)


SCORE_ELBOS = {
    "loo4": lambda: pr.ScoreFunctionELBO(num_particles=4, baseline="loo"),
    "decaying": lambda: pr.ScoreFunctionELBO(baseline="decaying"),
    "none": lambda: pr.ScoreFunctionELBO(baseline="none"),
}
DRAWS = {"loo4": 500, "decaying": 900, "none": 1100}  # 4 SE ~ 0.1-0.2 of the gradient


@pytest.mark.parametrize("which", sorted(SCORE_ELBOS))
def test_categorical_score_estimators_unbiased(which):
    _check_unbiased(cat_model, cat_guide, SCORE_ELBOS[which](), cat_exact_elbo, DRAWS[which])


def test_categorical_nn_baseline_unbiased():
    net = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))
    guide = lambda: cat_guide(baseline_net=net)  # noqa: E731
    _check_unbiased(cat_model, guide, pr.ScoreFunctionELBO(), cat_exact_elbo, 1100)  # untrained


def test_categorical_enumeration_is_exact():
    plan = pr.route(cat_model, cat_guide)
    assert plan["z"].estimator == "enumerate"
    exact = _exact_grads(cat_exact_elbo, cat_model, cat_guide)
    stats = pr.gradient_variance(cat_model, cat_guide, plan.elbo(), num_draws=3)
    torch.testing.assert_close(
        stats.params["logits"].mean.float(), exact["logits"], atol=1e-5, rtol=1e-4
    )
    assert stats.trace_cov < 1e-10


@pytest.mark.parametrize("which", sorted(SCORE_ELBOS))
def test_poisson_score_estimators_unbiased(which):
    _check_unbiased(pois_model, pois_guide, SCORE_ELBOS[which](), pois_exact_elbo, DRAWS[which])


def test_poisson_routed_default_unbiased():
    plan = pr.route(pois_model, pois_guide)
    assert plan["z"].estimator == "score" and plan["z"].variance_reduction == "loo"
    _check_unbiased(pois_model, pois_guide, plan.elbo(), pois_exact_elbo, 400)


def test_gaussian_pathwise_and_score_unbiased():
    plan = pr.route(gauss_model, gauss_guide)
    assert plan["z"].estimator == "pathwise"
    _check_unbiased(gauss_model, gauss_guide, plan.elbo(), gauss_exact_elbo, 500)
    plan = pr.route(gauss_model, gauss_guide, estimators={"z": "score"})
    assert plan["z"].estimator == "score"
    _check_unbiased(gauss_model, gauss_guide, plan.elbo(), gauss_exact_elbo, 1800)


def test_a_biased_estimator_is_caught(monkeypatch):
    """The check fails on a broken estimator: leave-one-out whose baseline includes particle
    k's own cost, ``mean_j c_j``, which depends on the sample (the gradient shrinks by 1/K)."""

    def with_own_cost(self, cost, options):
        return cost.mean(self.dim, keepdim=True), 0.0

    monkeypatch.setattr(LeaveOneOut, "forward", with_own_cost)
    with pytest.raises(AssertionError):
        _check_unbiased(cat_model, cat_guide, SCORE_ELBOS["loo4"](), cat_exact_elbo, 500)


@pytest.mark.filterwarnings("ignore:ShapeAugmentedGamma is not declared")
def test_partially_reparameterized_sampler_unbiased():
    """ShapeAugmentedGamma: its own score term (the accept step) with a running average."""
    _check_unbiased(gamma_model, gamma_guide, pr.ScoreFunctionELBO(), gamma_exact_elbo, 400)
