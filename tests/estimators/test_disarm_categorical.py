"""DisARM_ELBO on categorical sites (stick-breaking decisions): unbiased against the exact ELBO.

N independent copies side by side (as in test_disarm.py). Copy n: z ~ Categorical(PRIOR) over 4
categories, y ~ N(0, 1), x ~ N(theta + MU[z] + y, 1) with x = 1.5; guide Categorical (or
OneHotCategorical) with logits a, and N(c, 0.7) for y. The exact ELBO sums the 4 categories and
is closed form in y. The mean of N draws must lie within 4 standard errors of the exact
gradient, and those 4 standard errors must be a small part of it.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_reparam.estimators import DisARM_ELBO, ScoreFunctionELBO
from pyro_reparam.estimators.disarm import first_stop, stick_breaking_logits

N = 20000
X = 1.5
C = 4
PRIOR = torch.tensor([0.1, 0.2, 0.3, 0.4])
MU = torch.tensor([-1.0, 0.5, 2.0, 3.0])
INIT = torch.tensor([0.6, -0.4, 0.1, 0.3])
C0 = 0.2
THETA0 = -0.3
SY = 0.7


def model(onehot=False, n=N):
    theta = pyro.param("theta", torch.full((n,), THETA0))
    with pyro.plate("copies", n):
        prior = dist.OneHotCategorical(PRIOR) if onehot else dist.Categorical(PRIOR)
        z = pyro.sample("z", prior)
        mean = (z * MU).sum(-1) if onehot else MU[z]
        y = pyro.sample("y", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(theta + mean + y, 1.0), obs=torch.full((n,), X))


def guide(onehot=False, n=N):
    a = pyro.param("a", INIT.expand(n, C).clone())
    c = pyro.param("c", torch.full((n,), C0))
    with pyro.plate("copies", n):
        q = dist.OneHotCategorical(logits=a) if onehot else dist.Categorical(logits=a)
        pyro.sample("z", q)
        pyro.sample("y", dist.Normal(c, SY))


def exact_elbo(a, c, theta):
    log_q = a.log_softmax(-1)
    lik = -0.5 * math.log(2 * math.pi) - 0.5 * ((X - theta - MU - c) ** 2 + SY**2)
    prior_y = -0.5 * math.log(2 * math.pi) - 0.5 * (c**2 + SY**2)
    entropy_y = 0.5 * math.log(2 * math.pi * math.e * SY**2)
    f = PRIOR.log() + lik - log_q
    return (log_q.exp() * f).sum() + prior_y + entropy_y


def truth():
    a = INIT.clone().requires_grad_()
    c = torch.tensor(C0, requires_grad=True)
    theta = torch.tensor(THETA0, requires_grad=True)
    value = exact_elbo(a, c, theta)
    grads = torch.autograd.grad(value, [a, c, theta])
    return value.detach(), torch.cat([grads[0], grads[1].reshape(1), grads[2].reshape(1)])


def draws(elbo, onehot, names=("a", "c", "theta")):
    loss = elbo.loss_and_grads(model, guide, onehot)
    store = pyro.get_param_store()
    return loss, torch.cat([store[n].grad.reshape(N, -1) for n in names], -1)


def test_stick_breaking_is_the_categorical():
    theta = stick_breaking_logits(INIT.log_softmax(-1) + 0.7)  # shift-invariant
    d = torch.rand(200000, C - 1) < torch.sigmoid(theta)
    freq = torch.bincount(first_stop(d), minlength=C) / d.shape[0]
    assert torch.allclose(freq, INIT.softmax(-1), atol=0.005), freq


@pytest.mark.parametrize("onehot", [False, True])
@pytest.mark.parametrize("pairs", [1, 2])
def test_unbiased_against_the_exact_elbo(onehot, pairs):
    value, exact = truth()
    loss, samples = draws(DisARM_ELBO(num_pairs=pairs), onehot)
    samples = -samples  # loss gradients are minus the ELBO's
    mean = samples.mean(0)
    se = samples.std(0) / math.sqrt(N)
    assert (4 * se[:C]).norm() < 0.2 * exact[:C].norm(), (se, exact)  # the logits' part
    assert ((mean - exact).abs() <= 4 * se).all(), (mean, exact, se)
    assert -loss / N == pytest.approx(value.item(), abs=0.03)


def test_variance_against_the_score_function():
    """DisARM with 2 pairs against the bare score function and leave-one-out, both over 4
    particles, on the logits. On this toy DisARM is no better than the bare score function
    (about 1.1 times its variance) and leave-one-out has about half DisARM's: which estimator
    wins is a question for route(select="measure")."""
    _, d = draws(DisARM_ELBO(num_pairs=2), True, names=("a",))
    var = {}
    for name, elbo in {
        "bare": pyro.infer.Trace_ELBO(num_particles=4, vectorize_particles=True),
        "loo": ScoreFunctionELBO(num_particles=4, baseline="loo"),
    }.items():
        pyro.clear_param_store()
        elbo.loss_and_grads(model, guide, True)
        var[name] = d.var(0).sum() / pyro.param("a").grad.var(0).sum()
    print(f"tr var of the logits gradient, DisARM (2 pairs) / bare (4): {var['bare']:.3f}, ")
    print(f"DisARM (2 pairs) / LOO (4): {var['loo']:.3f}")
    assert var["bare"] < 1.5
    assert var["loo"] < 3.0
