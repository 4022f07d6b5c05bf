"""DiscreteVAE: routing, shapes of its methods, and estimator options."""

import math

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

import pyro_reparam as pr
from pyro_reparam.models import DiscreteVAE

CAT = {"latent": "categorical", "num_categories": 4}


def _x(n=12, d=16):
    return (torch.rand(n, d, generator=torch.Generator().manual_seed(0)) > 0.5).float()


@pytest.mark.parametrize(
    ("kwargs", "estimator"),
    [
        ({}, "score"),
        ({"estimator": "relaxed"}, "relaxed"),
        ({"num_latents": 1, "estimator": "enumerate"}, "enumerate"),
        ({"latent": "categorical", "num_latents": 3, "num_categories": 4}, "score"),
        (
            {
                "latent": "categorical",
                "num_latents": 3,
                "num_categories": 4,
                "estimator": "relaxed",
            },
            "relaxed",
        ),
        (
            {
                "latent": "categorical",
                "num_latents": 1,
                "num_categories": 5,
                "estimator": "enumerate",
            },
            "enumerate",
        ),
    ],
)
def test_routes_and_trains_a_step(kwargs, estimator):
    x = _x()
    vae = DiscreteVAE(16, hidden=(8,), **{"num_latents": 6, **kwargs})
    plan = pr.route(vae.model, vae.guide, x)
    assert plan["z"].estimator == estimator
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-2}), plan.elbo())
    before = vae.encoder[0].weight.detach().clone()
    loss = svi.step(x)
    assert torch.isfinite(torch.tensor(loss))
    assert not torch.equal(before, vae.encoder[0].weight)  # the encoder gets a gradient


def test_methods_shapes_and_bounds():
    x = _x()
    vae = DiscreteVAE(16, num_latents=5, hidden=(8,))
    assert vae.encode(x).shape == (12, 5)
    assert vae.reconstruct(x).shape == (12, 16)
    assert vae.sample(7).shape == (7, 16)
    assert vae.interpolate(x[0], x[1], steps=6).shape == (6, 16)
    kl = vae.kl(x)
    assert kl.shape == (12,) and (kl >= 0).all()
    pyro.set_rng_seed(0)
    ll = vae.log_likelihood(x, num_samples=2000)
    # exact log p(x) by summing over all 2^5 latent values
    z = torch.tensor([[(i >> b) & 1 for b in range(5)] for i in range(32)]).float()
    log_joint = vae.likelihood_given(z[:, None]).log_prob(x) + vae.prior(1).log_prob(z[:, None])
    exact = torch.logsumexp(log_joint, 0)
    assert torch.allclose(ll, exact, atol=0.05)


def test_enumeration_is_refused_when_infeasible():
    with pytest.raises(ValueError, match="feasible only for num_latents=1"):
        DiscreteVAE(16, num_latents=8, estimator="enumerate")
    with pytest.raises(ValueError, match="latent must be one of"):
        DiscreteVAE(16, latent="gaussian")


@pytest.mark.cuda
@pytest.mark.parametrize("estimator", ["score", "relaxed"])
def test_trains_on_cuda(estimator):
    x = _x().cuda()
    vae = DiscreteVAE(16, num_latents=6, hidden=(8,), estimator=estimator).cuda()
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-2}), pr.route(vae.model, vae.guide, x).elbo())
    assert torch.isfinite(torch.tensor(svi.step(x)))
    assert vae.log_likelihood(x, num_samples=8).device.type == "cuda"


def test_relaxed_categorical_runs_under_pyro_validation():
    """The straight-through sample is scored at its soft value, on the simplex only up to
    rounding; with validation on (Pyro's default) that must not raise."""
    x = _x()
    vae = DiscreteVAE(16, latent="categorical", num_latents=4, num_categories=10, hidden=(8,),
                      estimator="relaxed", temperature=0.5)  # fmt: skip
    elbo = Trace_ELBO()
    losses = [elbo.loss(vae.model, vae.guide, x) for _ in range(50)]
    assert all(math.isfinite(v) for v in losses)
