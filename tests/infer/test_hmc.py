"""The batched HMC: a badly scaled Gaussian from a far start, and divergent transitions."""

import arviz as az
import torch

from pyro_reparam.infer.hmc import hmc


def test_hmc_samples_a_standard_normal_with_a_badly_scaled_start():
    """1000 draws of N(0, diag(1, 100)) from far away: the mass matrix adapts to the scales."""
    torch.manual_seed(0)
    scale = torch.tensor([1.0, 10.0])
    result = hmc(lambda t: -0.5 * (t / scale).pow(2).sum(-1), torch.full((2, 2), 30.0),
                 num_samples=500, warmup=300, num_steps=10)  # fmt: skip
    draws = result.samples.flatten(0, 1)
    ess = torch.as_tensor(az.ess(result.samples.numpy(), chain_axis=0, draw_axis=1))
    assert ((draws.mean(0) / scale).abs() < 4 / ess.sqrt()).all()
    assert ((draws.std(0) / scale - 1).abs() < 4 / (2 * ess).sqrt()).all()
    assert torch.allclose(result.inverse_mass.sqrt() / scale, torch.ones(2), rtol=0.3)


def test_divergent_transitions_are_counted():
    def narrow(theta):
        return -0.5 * (theta / 1e-3).pow(2).sum(-1)

    def standard(theta):
        return -0.5 * theta.pow(2).sum(-1)

    torch.manual_seed(0)
    init = torch.zeros(3, 2)
    # no warm-up: the first step size (0.1 / sqrt(2)) is 70 sd of the narrow target
    bad = hmc(narrow, init, num_samples=10, warmup=0, num_steps=4)
    assert bad.divergences.tolist() == [10, 10, 10]
    good = hmc(standard, init, num_samples=50, warmup=50, num_steps=8)
    assert good.divergences.sum().item() == 0
