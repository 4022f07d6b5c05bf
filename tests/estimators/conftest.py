"""Pyro's ELBO conventions, checked the same way for every estimator ELBO of the package."""

import math

import pyro
import pytest


@pytest.fixture
def loss_agrees():
    """``loss_agrees(elbo, model, guide, *args, seed=S)``: ``differentiable_loss`` has the value
    of ``loss`` under the same seed; returns it (with its graph, for gradient checks). ``loss``
    runs once first, so that a guessed ``max_plate_nesting`` (which draws) is settled before
    the seeded calls."""

    def check(elbo, model, guide, *args, seed: int):
        elbo.loss(model, guide, *args)
        pyro.set_rng_seed(seed)
        loss = elbo.differentiable_loss(model, guide, *args)
        pyro.set_rng_seed(seed)
        assert loss.item() == pytest.approx(elbo.loss(model, guide, *args), rel=1e-5)
        return loss

    return check


@pytest.fixture
def svi_steps():
    """``svi_steps(elbo, model, guide, *args)``: an ``SVI`` step with the ELBO gives a finite
    loss."""

    def check(elbo, model, guide, *args):
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
        assert math.isfinite(svi.step(*args))

    return check
