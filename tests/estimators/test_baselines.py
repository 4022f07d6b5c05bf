"""Each baseline's math, its state (buffers and parameters) and the ELBO's state_dict."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyro_reparam as pr
from pyro_reparam.estimators import DecayingAverage, LeaveOneOut, NeuralBaseline
from pyro_reparam.estimators.baselines import SiteOptions, fit_shape

NO_OPTIONS = SiteOptions()


def test_decaying_average_subtracts_the_average_of_earlier_steps():
    avg = DecayingAverage("z", beta=0.75)
    costs = [torch.tensor([1.0, 3.0]), torch.tensor([6.0, 6.0]), torch.tensor([0.0, 2.0])]
    used = [avg(c, NO_OPTIONS)[0].item() for c in costs]
    assert used == [0.0, 2.0, 0.75 * 2.0 + 0.25 * 6.0]  # b_{t-1}: no draw of step t in it
    assert avg.summary() == pytest.approx(0.75 * 3.0 + 0.25 * 1.0)
    fresh = DecayingAverage("z", beta=0.75)
    fresh.load_state_dict(avg.state_dict())
    assert sorted(fresh.state_dict()) == ["steps", "value"] and fresh.steps.item() == 3
    assert fresh(costs[0], NO_OPTIONS)[0].item() == avg.summary()


def test_leave_one_out_is_the_mean_of_the_other_particles():
    cost = torch.tensor([[1.0, 10.0], [2.0, 20.0], [6.0, 30.0]])  # 3 particles x 2 data
    b, loss = LeaveOneOut("z", dim=-2)(cost, NO_OPTIONS)
    want = torch.tensor([[4.0, 25.0], [3.5, 20.0], [1.5, 15.0]])
    torch.testing.assert_close(b, want)
    assert loss == 0.0
    with pytest.raises(ValueError, match="site 'z': leave-one-out needs the particles"):
        LeaveOneOut("z", dim=-2)(cost[:1], NO_OPTIONS)


def test_neural_baseline_shapes_and_its_module():
    net = nn.Linear(2, 1)
    x = torch.randn(5, 2)
    baseline = NeuralBaseline("z", net)
    options = SiteOptions(nn_baseline=net, nn_baseline_input=x)
    b, loss = baseline(torch.zeros(5), options)  # (5, 1) -> (5,)
    assert b.shape == (5,) and not b.requires_grad and loss.requires_grad
    assert fit_shape(torch.zeros(5), torch.zeros(3, 5), "z").shape == (3, 5)  # particles
    with pytest.raises(ValueError, match=r"site 'z': the baseline has shape \(4,\)"):
        fit_shape(torch.zeros(4), torch.zeros(5), "z")
    other = SiteOptions(nn_baseline=nn.Linear(2, 1), nn_baseline_input=x)
    with pytest.raises(ValueError, match="another module than on the first step"):
        baseline(torch.zeros(5), other)


def _pair(name):
    def model():
        with pyro.plate("data", 3):
            z = pyro.sample(name, dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor([0.0, 1.0, 2.0]))

    def guide():
        probs = pyro.param("probs", torch.full((3,), 0.4))
        with pyro.plate("data", 3):
            pyro.sample(name, dist.Bernoulli(probs))

    return model, guide


@pytest.mark.parametrize(("site", "key"), [("z", "z"), ("enc.z", "enc%2Ez"), ("values", "%values")])
def test_elbo_state_round_trips_and_waits_for_the_sites_first_step(site, key):
    """Site names with dots, or that are ModuleDict attributes, make valid keys."""
    model, guide = _pair(site)
    elbo = pr.ScoreFunctionELBO(baseline="decaying")
    for _ in range(3):
        elbo.loss_and_grads(model, guide)
    state = {k: v.clone() for k, v in elbo.state_dict().items()}
    assert sorted(state) == [f"{key}.steps", f"{key}.value"]
    fresh = pr.ScoreFunctionELBO(baseline="decaying")
    fresh.load_state_dict(state)
    assert fresh.baseline_state() == {}  # no baseline made yet: the state waits
    fresh.loss_and_grads(model, guide)
    elbo.loss_and_grads(model, guide)
    assert fresh.baseline_for(site) == "decaying"
    assert fresh.state_dict()[f"{key}.steps"].item() == 4
    assert fresh.baseline_state()[site] != state[f"{key}.value"].item()  # updated from it


def test_a_state_of_another_baseline_is_refused_naming_the_site():
    model, guide = _pair("z")
    elbo = pr.ScoreFunctionELBO(baseline="decaying")
    elbo.load_state_dict({"z.net.weight": torch.zeros(1, 1)})
    with pytest.raises(ValueError, match="site 'z': the saved baseline state does not fit"):
        elbo.loss_and_grads(model, guide)
    with pytest.raises(ValueError, match=r"is not '<site>\.<name>'"):
        elbo.load_state_dict({"z": torch.zeros(())})
