"""The ready models' direct ELBOs list the parameters of their steps exactly as Pyro's param
trace of the traced ELBO finds them, and skip their ``pyro.module`` calls only where those
would change nothing (outside any handler, with the store holding the very tensors)."""

import pyro
import pytest
import torch
from pyro import poutine

from pyro_reparam import route
from pyro_reparam.models import VAE, BayesianMLP, DiscreteVAE
from pyro_reparam.train import fit
from pyro_reparam.train.step import params_by_name


def _vae(likelihood):
    torch.manual_seed(0)
    vae = VAE(16, 2, hidden=(8,), likelihood=likelihood, name=f"v_{likelihood}")
    x = torch.rand(12, 16, generator=torch.Generator().manual_seed(1))
    x = (x > 0.5).float() if likelihood == "bernoulli" else x
    return vae, vae.elbo(), vae.elbo(traced=True), (x,)


def _dvae(likelihood):
    torch.manual_seed(0)
    dvae = DiscreteVAE(
        16, num_latents=4, hidden=(8,), likelihood=likelihood, name=f"d_{likelihood}"
    )
    x = torch.rand(12, 16, generator=torch.Generator().manual_seed(1))
    x = (x > 0.5).float() if likelihood == "bernoulli" else x
    traced = route(dvae.model, dvae.guide, x, num_particles=4).elbo()
    pyro.clear_param_store()  # routing ran the pair
    return dvae, dvae.elbo(), traced, (x,)


def _bnn(noise):
    torch.manual_seed(0)
    bnn = BayesianMLP(3, 1, (8,), noise=noise, name=f"b_{noise}")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, generator=g)
    return bnn, bnn.elbo(), bnn.elbo(traced=True), (x, torch.sin(x[:, 0]))


CASES = {
    "vae-bernoulli": lambda: _vae("bernoulli"),
    "vae-gaussian": lambda: _vae("gaussian"),
    "dvae-bernoulli": lambda: _dvae("bernoulli"),
    "dvae-gaussian": lambda: _dvae("gaussian"),
    "bnn-heteroscedastic": lambda: _bnn("heteroscedastic"),
    "bnn-homoscedastic": lambda: _bnn("homoscedastic"),
}


def _traced_params(elbo, model, guide, args):
    """What ``SVI.step`` steps: the param trace of the traced ELBO's step."""
    with poutine.trace(param_only=True) as tape:
        elbo.loss_and_grads(model, guide, *args)
    return params_by_name(tape.trace)


@pytest.mark.parametrize("frozen", [False, True], ids=["", "frozen"])
@pytest.mark.parametrize("case", CASES)
def test_step_params_are_the_param_trace_of_the_traced_elbo(case, frozen):
    pyro.clear_param_store()
    net, direct, traced, args = CASES[case]()
    if frozen:  # pyro.module leaves a frozen parameter out of the store, and so out of the trace
        next(net.parameters()).requires_grad_(False)
    assert direct.step_params(net.model, net.guide, *args) is None  # the store is empty
    reference = _traced_params(traced, net.model, net.guide, args)
    listed = direct.step_params(net.model, net.guide, *args)
    assert [n for n, _ in listed] == [n for n, _ in reference]
    assert all(a is b for (_, a), (_, b) in zip(listed, reference, strict=True))
    pyro.clear_param_store()
    assert direct.step_params(net.model, net.guide, *args) is None


@pytest.mark.parametrize("case", ["vae-bernoulli", "dvae-bernoulli"])
def test_no_step_params_for_another_pair(case):
    pyro.clear_param_store()
    net, direct, traced, args = CASES[case]()
    _traced_params(traced, net.model, net.guide, args)
    assert direct.step_params(net.model, net.guide, *args) is not None
    assert direct.step_params(poutine.scale(net.model, scale=0.5), net.guide, *args) is None
    other = CASES[case]()[0]
    assert direct.step_params(other.model, net.guide, *args) is None


def _count_module_calls(monkeypatch):
    calls = []
    module = pyro.module

    def counted(name, nn_module, **kwargs):
        calls.append(name)
        return module(name, nn_module, **kwargs)

    monkeypatch.setattr(pyro, "module", counted)
    return calls


@pytest.mark.parametrize("case", CASES)
def test_registration_is_skipped_only_where_it_changes_nothing(case, monkeypatch):
    pyro.clear_param_store()
    net, direct, _, args = CASES[case]()
    calls = _count_module_calls(monkeypatch)
    direct.loss_and_grads(net.model, net.guide, *args)  # the first step registers
    first = len(calls)
    assert first >= 1
    direct.loss_and_grads(net.model, net.guide, *args)  # nothing to register: skipped
    assert len(calls) == first
    with poutine.trace(param_only=True) as tape:  # SVI.step: the trace sees every parameter
        direct.loss_and_grads(net.model, net.guide, *args)
    assert len(calls) == 2 * first
    assert set(tape.trace.nodes) == {n for n, _ in direct.step_params(net.model, net.guide, *args)}
    pyro.clear_param_store()  # a cleared store: registered again, and trained from there
    direct.loss_and_grads(net.model, net.guide, *args)
    assert len(calls) == 3 * first
    assert direct.step_params(net.model, net.guide, *args) is not None


@pytest.mark.parametrize("case", ["vae-gaussian", "dvae-gaussian", "bnn-homoscedastic"])
def test_fit_without_the_trace_trains_every_parameter(case):
    """``fit`` steps the listed parameters: every one that has a gradient moves, and the
    result is the one of a fit whose ELBO lists nothing (so that every step is traced)."""

    results = []
    for listed in (True, False):
        pyro.clear_param_store()
        net, direct, _, args = CASES[case]()
        if not listed:
            direct.step_params = None  # not callable: fit traces every step for its parameters
        before = {n: p.detach().clone() for n, p in net.named_parameters()}
        pyro.set_rng_seed(0)
        data = args[0] if len(args) == 1 else args
        h = fit(net.model, net.guide, data, elbo=direct, epochs=3, batch_size=4, progress=False)
        after = {n: p.detach().clone() for n, p in net.named_parameters()}
        results.append((h.train_elbo, after))
    (h1, p1), (h2, p2) = results
    assert h1 == h2
    for name in p1:
        torch.testing.assert_close(p1[name], p2[name], rtol=0, atol=0)
    moved = [n for n in p1 if not torch.equal(p1[n], before[n])]
    assert "log_sigma" in moved or "log_noise" in moved or case.startswith("bnn")
    assert len(moved) >= len(p1) - 1


@pytest.mark.parametrize("how", ["set_state", "assign"])
@pytest.mark.parametrize("case", ["vae-gaussian", "dvae-bernoulli", "bnn-homoscedastic"])
def test_a_store_loaded_or_assigned_since_is_not_trusted(case, how):
    """After ``set_state`` or ``store[name] = ...`` the store's tensors are not the module's:
    ``pyro.module`` hands back the stored ones, so the step must register and be traced."""
    pyro.clear_param_store()
    net, direct, _, args = CASES[case]()
    direct.loss_and_grads(net.model, net.guide, *args)
    assert direct.step_params(net.model, net.guide, *args) is not None
    store = pyro.get_param_store()
    if how == "set_state":
        state = store.get_state()
        state["params"] = {n: v.detach().clone() for n, v in state["params"].items()}
        store.set_state(state)
    else:
        name = sorted(store.keys())[0]
        store[name] = store[name].detach().clone()
    assert direct.step_params(net.model, net.guide, *args) is None


@pytest.mark.parametrize("case", ["vae-gaussian", "dvae-gaussian"])
def test_a_frozen_pyro_param_tensor_stays_listed(case):
    """``pyro.param`` keeps a tensor frozen after registration in the store and in the param
    trace (so ``SVI`` still hands it to the optimizer), unlike ``pyro.module``."""
    pyro.clear_param_store()
    net, direct, traced, args = CASES[case]()
    direct.loss_and_grads(net.model, net.guide, *args)
    net.log_sigma.requires_grad_(False)
    listed = direct.step_params(net.model, net.guide, *args)
    reference = _traced_params(traced, net.model, net.guide, args)
    assert f"{net.name}.log_sigma" in [n for n, _ in listed]
    assert [n for n, _ in listed] == [n for n, _ in reference]
