"""AutoReparamGuide's storage beyond AutoNormal's: instances never share values, the store's
own values are still taken up, pickling keeps the model, encoders are submodules."""

import io

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

import pyro_reparam as pr
from pyro_reparam.diagnostics import to_datatree


def model(x):
    w = pyro.sample("w", dist.Normal(0.0, 3.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(w, 1.0), obs=x)


def _fit(guide, x, steps=100):
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    for _ in range(steps):
        svi.step(x)


def _draw_mean(guide, x):
    return Predictive(model, guide=guide, num_samples=200, parallel=True)(x)["w"].mean().item()


@pytest.mark.parametrize(
    "cls",
    [
        pytest.param(
            AutoNormal,
            marks=pytest.mark.xfail(strict=True, reason="AutoNormal reads the store by name"),
        ),
        pr.AutoReparamGuide,
    ],
    ids=["AutoNormal", "AutoReparamGuide"],
)
def test_two_instances_for_one_model_do_not_share_values(cls):
    """Fitted one after the other without clearing the store: each keeps its own fit."""
    x = torch.full((10,), -2.0)
    first = cls(model)
    _fit(first, x)
    second = cls(model)
    second(x)
    assert second.median()["w"] == 0.0  # its own initialization, not first's fit
    _fit(second, x + 4)
    assert abs(_draw_mean(first, x) + 2) < 0.3 and abs(_draw_mean(second, x) - 2) < 0.3
    dt = to_datatree(model, first, x, num_samples=50, restarts=[first, second])
    chains = dt.posterior["w"].values.mean(-1)
    assert chains[0] < -1.5 and chains[1] > 1.5


def test_values_put_in_the_store_are_taken_up():
    x = torch.zeros(5)
    guide = pr.AutoReparamGuide(model)
    guide(x)
    pyro.get_param_store()["AutoReparamGuide.w.loc"] = torch.tensor(1.25)
    assert guide.median()["w"] == 1.25
    assert guide(x)["w"].shape == ()
    path = io.BytesIO()
    torch.save(pyro.get_param_store().get_state(), path)
    pyro.clear_param_store()
    fresh = pr.AutoReparamGuide(model)
    fresh(x)
    path.seek(0)
    pyro.get_param_store().set_state(torch.load(path, weights_only=False))
    assert fresh.median()["w"] == 1.25


def binomial_model(n):
    p = pyro.sample("p", dist.Beta(2.0, 2.0))
    with pyro.plate("data", len(n)):
        k = pyro.sample("k", dist.Binomial(n, p))
        pyro.sample("y", dist.Normal(k, 1.0), obs=n / 2)


def test_pickling_keeps_the_original_guides_model():
    n = torch.tensor([4.0, 5.0])
    guide = pr.AutoReparamGuide(binomial_model)
    guide(n)
    buf = io.BytesIO()
    torch.save(guide, buf)
    assert (guide(torch.tensor([1.0, 0.0]))["k"] <= torch.tensor([1, 0])).all()  # reads the model
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    with pytest.raises(ValueError, match=r"site 'k'.*attach_model\(model\)"):
        loaded(n)
    loaded.attach_model(binomial_model)
    assert (loaded(torch.tensor([1.0, 1.0]))["k"] <= 1).all()
    assert torch.equal(loaded.median()["p"], guide.median()["p"])


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)

    def forward(self, x):
        return self.linear(x.unsqueeze(-1)).squeeze(-1), torch.ones_like(x)


def local_model(x):
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def test_encoders_are_submodules_of_the_guide():
    x = torch.randn(6)
    encoder = Encoder()
    guide = pr.AutoReparamGuide(local_model, encoders={"z": encoder})
    assert {n for n, _ in guide.named_parameters()} == {
        "encoders.z.linear.weight",
        "encoders.z.linear.bias",
    }
    svi = SVI(local_model, guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    svi.step(x)
    assert "AutoReparamGuide.encoders.z$$$linear.weight" in pyro.get_param_store()
    guide.requires_grad_(False)
    before = encoder.linear.weight.detach().clone()
    svi.step(x)
    assert torch.equal(encoder.linear.weight, before)
    guide.requires_grad_(True)
    buf = io.BytesIO()
    torch.save(guide, buf)
    pyro.clear_param_store()
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded.median(x)["z"], guide.median(x)["z"])
    second = pr.AutoReparamGuide(local_model, encoders={"z": Encoder()})
    svi = SVI(local_model, second, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    svi.step(x)
    assert torch.equal(encoder.linear.weight, before)  # the first guide's encoder is its own


def test_a_site_named_like_a_guide_attribute_is_refused():
    def m():
        pyro.sample("encoders", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="site 'encoders' has the name of the guide's attribute"):
        pr.AutoReparamGuide(m)()


def test_init_scale_is_the_initial_scale():
    guide = pr.AutoReparamGuide(model, init_scale=0.02)
    guide(torch.zeros(3))
    assert guide.w.scale.item() == pytest.approx(0.02)
    with pytest.raises(ValueError, match="init_scale must be a number > 0"):
        pr.AutoReparamGuide(model, init_scale=0)
    with pytest.raises(ValueError, match="rank=2 needs continuous='lowrank'"):
        pr.AutoReparamGuide(model, rank=2)


@pytest.mark.cuda
@pytest.mark.parametrize("continuous", ["meanfield", "lowrank"])
def test_runs_on_cuda(continuous):
    x = torch.randn(5, device="cuda")
    guide = pr.AutoReparamGuide(binomial_model, continuous=continuous)
    svi = SVI(binomial_model, guide, pyro.optim.Adam({"lr": 0.1}), pr.route(
        binomial_model, guide, x.abs().round() + 1).elbo())  # fmt: skip
    for _ in range(3):
        svi.step(x.abs().round() + 1)
    assert all(p.device.type == "cuda" for p in guide.parameters())
    assert guide.median()["p"].device.type == "cuda"
