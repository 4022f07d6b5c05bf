"""VIMCO_ELBO: an unbiased gradient of the IWAE bound, checked against exact enumeration.

Each test runs N independent copies of a tiny model side by side (a plate of copies, each copy
with its own guide parameters), so one step gives N independent draws of each copy's gradient;
the exact gradient of the IWAE bound enumerates all K-tuples of the copy's discrete states,
weighted by their q-probability. The mean draw must lie within 4 standard errors of it, and
those 4 standard errors must be small against the gradient (a quarter of its size), so that a
biased estimator fails.
"""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_reparam.estimators import VIMCO_ELBO

N = 20000
X = 1.5
PRIOR = torch.tensor([0.3, 0.6])
INIT = torch.tensor([0.4, -0.7])
THETA0 = -0.3


def local_model(n=N):
    theta = pyro.param("theta", torch.full((n,), THETA0))
    with pyro.plate("copies", n):
        z1 = pyro.sample("z1", dist.Bernoulli(PRIOR[0]))
        z2 = pyro.sample("z2", dist.Bernoulli(PRIOR[1]))
        pyro.sample("x", dist.Normal(theta + z1 + 2 * z2, 1.0), obs=torch.full((n,), X))


def local_guide(n=N):
    a = pyro.param("a", INIT.expand(n, 2).clone())
    with pyro.plate("copies", n):
        pyro.sample("z1", dist.Bernoulli(logits=a[:, 0]))
        pyro.sample("z2", dist.Bernoulli(logits=a[:, 1]))


def exact_iwae(log_w, log_q, k):
    """``E[log (1/K) sum_k w_k]`` over every K-tuple of states (``log_w``, ``log_q``: (S,))."""
    total = 0.0
    for tup in itertools.product(range(log_w.shape[0]), repeat=k):
        idx = torch.tensor(tup)
        total = total + log_q[idx].sum().exp() * (torch.logsumexp(log_w[idx], 0) - math.log(k))
    return total


def local_exact(a, theta, k):
    states = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    log_q = dist.Bernoulli(logits=a).log_prob(states).sum(-1)
    log_p = dist.Bernoulli(PRIOR).log_prob(states).sum(-1) + dist.Normal(
        theta + states[:, 0] + 2 * states[:, 1], 1.0
    ).log_prob(torch.tensor(X))
    return exact_iwae(log_p - log_q, log_q, k)


def draws(elbo, model, guide, names):
    elbo.loss_and_grads(model, guide)
    store = pyro.get_param_store()
    out = torch.cat([store[n].grad.reshape(N, -1) for n in names], -1)
    for n in names:
        store[n].grad = None
    return out


def check_unbiased(samples, truth):
    mean = samples.mean(0)
    se = samples.std(0) / math.sqrt(samples.shape[0])
    assert (4 * se).norm() < 0.25 * truth.norm(), (se, truth)
    assert ((mean - truth).abs() <= 4 * se).all(), (mean, truth, se)


@pytest.mark.parametrize("k", [2, 3])
def test_vimco_unbiased_per_datum(k):
    a = INIT.clone().requires_grad_()
    theta = torch.tensor(THETA0, requires_grad=True)
    ga, gt = torch.autograd.grad(local_exact(a, theta, k), [a, theta])
    truth = torch.cat([ga, gt.reshape(1)])
    samples = draws(VIMCO_ELBO(num_particles=k), local_model, local_guide, ["a", "theta"])
    check_unbiased(-samples, truth)  # loss gradients are minus the bound's


def global_model(n=N):
    with pyro.plate("copies", n, dim=-2):
        g = pyro.sample("g", dist.Bernoulli(0.5))
        with pyro.plate("data", 2, dim=-1):
            z = pyro.sample("z", dist.Bernoulli(0.4))
            pyro.sample("x", dist.Normal(g + 1.5 * z, 1.0), obs=torch.tensor([0.2, 2.1]))


def global_guide(n=N):
    b = pyro.param("b", torch.tensor([0.3, -0.5, 0.8]).expand(n, 3).clone())
    with pyro.plate("copies", n, dim=-2):
        pyro.sample("g", dist.Bernoulli(logits=b[:, :1]))
        with pyro.plate("data", 2, dim=-1):
            pyro.sample("z", dist.Bernoulli(logits=b[:, 1:]))


def global_exact(b, k):
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)))  # (g, z1, z2)
    log_q = dist.Bernoulli(logits=b).log_prob(states).sum(-1)
    g, z = states[:, :1], states[:, 1:]
    log_p = (
        dist.Bernoulli(0.5).log_prob(g).sum(-1)
        + dist.Bernoulli(0.4).log_prob(z).sum(-1)
        + dist.Normal(g + 1.5 * z, 1.0).log_prob(torch.tensor([0.2, 2.1])).sum(-1)
    )
    return exact_iwae(log_p - log_q, log_q, k)


def test_vimco_unbiased_global_latent():
    """The data plate is not common to all sites: the weights are per copy, over its data."""
    b = torch.tensor([0.3, -0.5, 0.8], requires_grad=True)
    (truth,) = torch.autograd.grad(global_exact(b, 2), [b])
    samples = draws(VIMCO_ELBO(num_particles=2), global_model, global_guide, ["b"])
    check_unbiased(-samples, truth)


def test_vimco_loss_is_the_iwae_bound():
    """``loss`` averages to the exact negative bound (per datum, summed over the copies)."""
    elbo = VIMCO_ELBO(num_particles=3)
    losses = torch.tensor([elbo.loss(local_model, local_guide, 2000) for _ in range(5)]) / 2000
    exact = local_exact(INIT, torch.tensor(THETA0), 3)
    assert abs(losses.mean() + exact) < 0.02


def gauss_model():
    loc = pyro.param("loc", torch.tensor(0.2))
    with pyro.plate("data", 3):
        z = pyro.sample("z", dist.Normal(loc, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor([0.0, 1.0, 2.0]))


def gauss_guide():
    mu = pyro.param("mu", torch.tensor([0.1, 0.2, 0.3]))
    with pyro.plate("data", 3):
        pyro.sample("z", dist.Normal(mu, 0.8))


def test_reparameterized_sites_match_renyi():
    """With a fully reparameterized guide VIMCO is the pathwise IWAE gradient, draw for draw."""
    results = []
    for elbo in (
        VIMCO_ELBO(num_particles=4),
        pyro.infer.RenyiELBO(alpha=0, num_particles=4, vectorize_particles=True),
    ):
        pyro.clear_param_store()
        pyro.set_rng_seed(1)
        loss = elbo.loss_and_grads(gauss_model, gauss_guide)
        store = pyro.get_param_store()
        results.append((loss, store["loc"].grad.clone(), store["mu"].grad.clone()))
    (l1, *g1), (l2, *g2) = results
    assert l1 == pytest.approx(l2, rel=1e-5)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b)


def test_conventions(loss_agrees, svi_steps):
    elbo = VIMCO_ELBO(num_particles=3)
    loss_agrees(elbo, local_model, local_guide, 5, seed=3).backward()
    assert pyro.param("a").grad is not None
    with pytest.raises(ValueError, match="num_particles"):
        VIMCO_ELBO(num_particles=1)
    svi_steps(elbo, local_model, local_guide, 5)
