"""What DisARM_ELBO, TaylorDisARM_ELBO and ARMS_ELBO share (``CoupledELBO``): a site whose
logits depend on another latent drawn per particle is refused, ``loss`` and
``differentiable_loss`` agree under one seed, and the ELBO plugs into ``SVI``."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from test_disarm import guide, model

from pyro_reparam.estimators import ARMS_ELBO, DisARM_ELBO, TaylorDisARM_ELBO

CASES = {
    "DisARM": (lambda: DisARM_ELBO(num_pairs=2), "differ between the two"),
    "TaylorDisARM": (lambda: TaylorDisARM_ELBO(num_pairs=2), "differ between the two"),
    "ARMS": (lambda: ARMS_ELBO(num_particles=3), "differ between particles"),
}


def chain_model():
    z = pyro.sample("z", dist.Bernoulli(0.5))
    pyro.sample("w", dist.Bernoulli(0.2 + 0.5 * z))


def chain_guide():
    a = pyro.param("a0", torch.tensor(0.1))
    z = pyro.sample("z", dist.Bernoulli(logits=a))
    pyro.sample("w", dist.Bernoulli(logits=z - 0.5))


@pytest.mark.parametrize("case", CASES)
def test_logits_that_depend_on_a_drawn_latent_are_refused(case):
    make, message = CASES[case]
    with pytest.raises(NotImplementedError, match=message):
        make().loss_and_grads(chain_model, chain_guide)


@pytest.mark.parametrize("case", CASES)
def test_loss_and_differentiable_loss_agree_and_svi_steps(case, loss_agrees, svi_steps):
    pyro.clear_param_store()
    elbo = CASES[case][0]()
    loss_agrees(elbo, model, guide, 5, seed=4)
    svi_steps(elbo, model, guide, 5)
