"""DisARM_ELBO: unbiased for the logits of Bernoulli guide sites, checked against the exact ELBO.

N independent copies side by side (see test_vimco.py). Copy n: z1 ~ Bern(0.3), z2 ~ Bern(0.6),
y ~ N(0, 1), x ~ N(theta + z1 + 2 z2 + y, 1) with x = 1.5; guide Bern(sigma(a1)), Bern(sigma(a2)),
N(c, 0.7). The exact ELBO sums the 4 states of (z1, z2) and is closed form in y.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_reparam.estimators import DisARM_ELBO

N = 20000
X = 1.5
PRIOR = torch.tensor([0.3, 0.6])
INIT = torch.tensor([0.4, -0.7, 0.2])  # a1, a2, c
THETA0 = -0.3
SY = 0.7


def model(n=N):
    theta = pyro.param("theta", torch.full((n,), THETA0))
    with pyro.plate("copies", n):
        z1 = pyro.sample("z1", dist.Bernoulli(PRIOR[0]))
        z2 = pyro.sample("z2", dist.Bernoulli(PRIOR[1]))
        y = pyro.sample("y", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(theta + z1 + 2 * z2 + y, 1.0), obs=torch.full((n,), X))


def guide(n=N):
    a = pyro.param("a", INIT.expand(n, 3).clone())
    with pyro.plate("copies", n):
        pyro.sample("z1", dist.Bernoulli(logits=a[:, 0]))
        pyro.sample("z2", dist.Bernoulli(logits=a[:, 1]))
        pyro.sample("y", dist.Normal(a[:, 2], SY))


def exact_elbo(a, theta):
    states = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    log_q = dist.Bernoulli(logits=a[:2]).log_prob(states).sum(-1)
    c = a[2]
    lik = -0.5 * math.log(2 * math.pi) - 0.5 * (
        (X - theta - states @ torch.tensor([1.0, 2.0]) - c) ** 2 + SY**2
    )
    prior_y = -0.5 * math.log(2 * math.pi) - 0.5 * (c**2 + SY**2)
    entropy_y = 0.5 * math.log(2 * math.pi * math.e * SY**2)
    f = dist.Bernoulli(PRIOR).log_prob(states).sum(-1) + lik - log_q
    return (log_q.exp() * f).sum() + prior_y + entropy_y


def draws(elbo, names=("a", "theta")):
    loss = elbo.loss_and_grads(model, guide)
    store = pyro.get_param_store()
    return loss, torch.cat([store[n].grad.reshape(N, -1) for n in names], -1)


def truth():
    a = INIT.clone().requires_grad_()
    theta = torch.tensor(THETA0, requires_grad=True)
    value = exact_elbo(a, theta)
    ga, gt = torch.autograd.grad(value, [a, theta])
    return value.detach(), torch.cat([ga, gt.reshape(1)])


@pytest.mark.parametrize("pairs", [1, 3])
def test_unbiased_against_the_exact_elbo(pairs):
    value, exact = truth()
    loss, samples = draws(DisARM_ELBO(num_pairs=pairs))
    samples = -samples  # loss gradients are minus the ELBO's
    mean = samples.mean(0)
    se = samples.std(0) / math.sqrt(N)
    assert (4 * se[:2]).norm() < 0.25 * exact[:2].norm(), (se, exact)  # the logits' part
    assert ((mean - exact).abs() <= 4 * se).all(), (mean, exact, se)
    assert -loss / N == pytest.approx(value.item(), abs=0.03)


def test_variance_against_the_score_function():
    """DisARM with one pair (2 evaluations) against Trace_ELBO with 2 particles on the logits."""
    _, d = draws(DisARM_ELBO(num_pairs=1), names=("a",))
    pyro.clear_param_store()
    elbo = pyro.infer.Trace_ELBO(num_particles=2, vectorize_particles=True)
    elbo.loss_and_grads(model, guide)
    s = pyro.param("a").grad
    ratio = d[:, :2].var(0).sum() / s[:, :2].var(0).sum()
    print(f"tr var of the logits gradient, DisARM / Trace_ELBO(2 particles): {ratio:.3f}")
    assert ratio < 0.5


def test_scope():
    def count_guide():
        pyro.sample("z", dist.Poisson(torch.tensor(3.0)))

    def count_model():
        pyro.sample("z", dist.Poisson(torch.tensor(2.0)))

    with pytest.raises(ValueError, match="neither"):
        DisARM_ELBO().loss_and_grads(count_model, count_guide)
