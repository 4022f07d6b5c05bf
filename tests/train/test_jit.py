"""fit(jit=True) with the routed ELBO (the JIT twin of its inner Pyro ELBO, its plan kept) and
with the plugin's score-function ELBO (no twin: run as it is, said in one line)."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoDelta

import pyro_reparam as pr
from pyro_reparam.estimators import ScoreFunctionELBO
from pyro_reparam.routing.build import RoutedELBO
from pyro_reparam.train.step import JIT_TWINS, CachedJitTraceMeanField_ELBO, jit_twin


def model(x, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(x @ w, 0.5), obs=y)


def _data(n=64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 2, generator=g)
    return x, x @ torch.tensor([1.0, -1.0]) + 0.5 * torch.randn(n, generator=g)


def test_routed_elbo_gets_the_jit_twin_of_its_inner_elbo_and_the_same_history():
    out, said = [], []
    for jit in (False, True):
        pyro.clear_param_store()
        h = pr.fit(model, AutoDelta(model), _data(), epochs=3, batch_size=16, progress=False,
                   jit=jit, log=said.append)  # fmt: skip
        out.append((h.train_elbo, pyro.param("AutoDelta.w").detach().clone()))
    assert out[1][0] == pytest.approx(out[0][0], rel=1e-5)
    torch.testing.assert_close(out[1][1], out[0][1], atol=1e-5, rtol=1e-5)
    routed = pr.route(model, AutoDelta(model), *_data()).elbo()
    twin = jit_twin(routed)
    assert isinstance(twin, RoutedELBO) and type(twin.inner) is JIT_TWINS[type(routed.inner)]
    assert twin.plan is routed.plan
    guide = AutoDelta(model)
    twin.loss(model, guide, *_data())
    assert twin._guide(guide) is twin._guide(guide)  # one routed guide: compiled once


def sbn(x):
    pyro.module("dec", DEC)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Bernoulli(logits=torch.zeros(x.shape[0], 3)).to_event(1))
        pyro.sample("x", dist.Bernoulli(logits=DEC(z)).to_event(1), obs=x)


def sbn_guide(x):
    pyro.module("enc", ENC)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Bernoulli(logits=ENC(x)).to_event(1))


ENC, DEC = torch.nn.Linear(6, 3), torch.nn.Linear(3, 6)


@pytest.mark.parametrize("routed", [False, True])
def test_score_function_elbo_runs_uncompiled_under_jit_and_says_so(routed):
    x = (torch.rand(32, 6, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    out, said = [], []
    for jit in (False, True):
        pyro.clear_param_store()
        torch.manual_seed(0)
        ENC.reset_parameters(), DEC.reset_parameters()
        elbo = None if routed else ScoreFunctionELBO(num_particles=4)
        h = pr.fit(sbn, sbn_guide, x, elbo=elbo, epochs=2, batch_size=8, progress=False,
                   jit=jit, log=said.append)  # fmt: skip
        out.append(h.train_elbo)
    assert out[1] == pytest.approx(out[0], rel=1e-6)
    notes = [m for m in said if m.startswith("jit=True")]
    assert len(notes) == 1 and "ScoreFunctionELBO has no TorchScript twin" in notes[0]


def test_other_elbos_are_refused_naming_them():
    with pytest.raises(ValueError, match=r"jit=True compiles .*RenyiELBO"):
        jit_twin(pyro.infer.RenyiELBO())


def test_the_mean_field_twin_compiles_once():
    """Pyro's JitTraceMeanField_ELBO recompiles at every call; the twin fit uses does not."""
    x, y = _data()
    guide = AutoDelta(model)
    elbo = CachedJitTraceMeanField_ELBO()
    losses = [elbo.differentiable_loss(model, guide, x, y).item() for _ in range(3)]
    compiled = elbo._differentiable_loss
    elbo.differentiable_loss(model, guide, x, y)
    assert elbo._differentiable_loss is compiled
    assert losses[0] == pytest.approx(losses[2])
