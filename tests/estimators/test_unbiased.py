"""Every estimator the router can choose (relaxations aside) is unbiased on exact problems.

Each problem has an ELBO computable exactly (closed form or a finite / truncated sum), whose
autograd gradient is the truth; the mean of N estimator draws must lie within 4 standard errors.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyro_reparam as pr
from pyro_reparam.distributions import ScoreFunction

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
    rate = pyro.param("log_rate", torch.tensor(1.2)).exp()
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
    mu = pyro.param("mu", torch.tensor(0.2))
    s = pyro.param("log_s", torch.tensor(-0.3)).exp()
    q = dist.Normal(mu, s)
    pyro.sample("z", ScoreFunction(q) if force_score else q)


def gauss_exact_elbo():
    mu, s = pyro.param("mu"), pyro.param("log_s").exp()
    prior = -math.log(2 * math.sqrt(2 * math.pi)) - (mu**2 + s**2) / 8
    lik = -0.5 * math.log(2 * math.pi) - ((X_GAUSS - mu) ** 2 + s**2) / 2
    entropy = 0.5 * torch.log(2 * math.pi * math.e * s**2)
    return prior + lik + entropy


def _exact_grads(exact_elbo, model, guide):
    pyro.poutine.trace(guide).get_trace()  # create params
    names = [n for n in pyro.get_param_store() if not n.startswith("_pyro_reparam")]
    params = [pyro.get_param_store().get_param(n).unconstrained() for n in names]
    grads = torch.autograd.grad(-exact_elbo(), params)
    return dict(zip(names, grads, strict=True))


def _check_unbiased(model, guide, elbo, exact_elbo, num_draws):
    exact = _exact_grads(exact_elbo, model, guide)
    stats = pr.gradient_variance(model, guide, elbo, num_draws=num_draws, params=list(exact))
    for name, want in exact.items():
        p = stats.params[name]
        err = (p.mean - want.double()).abs()
        tol = 4 * p.standard_error + 1e-6
        assert (err < tol).all(), (name, p.mean, want, p.standard_error)


def _nn():
    net = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))
    return lambda x: net(x).squeeze(-1), net


SCORE_ELBOS = {
    "loo4": lambda: pr.ScoreFunctionELBO(num_particles=4, baseline="loo"),
    "decaying": lambda: pr.ScoreFunctionELBO(baseline="decaying"),
    "none": lambda: pr.ScoreFunctionELBO(baseline="none"),
}


@pytest.mark.parametrize("which", sorted(SCORE_ELBOS))
def test_categorical_score_estimators_unbiased(which):
    _check_unbiased(cat_model, cat_guide, SCORE_ELBOS[which](), cat_exact_elbo, 700)


def test_categorical_nn_baseline_unbiased():
    net = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))
    guide = lambda: cat_guide(baseline_net=net)  # noqa: E731
    _check_unbiased(cat_model, guide, pr.ScoreFunctionELBO(), cat_exact_elbo, 700)


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
    _check_unbiased(pois_model, pois_guide, SCORE_ELBOS[which](), pois_exact_elbo, 700)


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
    _check_unbiased(gauss_model, gauss_guide, plan.elbo(), gauss_exact_elbo, 700)


def test_a_biased_estimator_is_caught():
    """The check fails on a broken estimator: a baseline that depends on the sample itself."""

    class Cheating(pr.ScoreFunctionELBO):
        def _baseline(self, name, site, cost):
            return cost * 0.5, 0.0  # uses z's own cost: biased

    with pytest.raises(AssertionError):
        _check_unbiased(cat_model, cat_guide, Cheating(), cat_exact_elbo, 700)
