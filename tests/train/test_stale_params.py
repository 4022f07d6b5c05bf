"""A second network under a name already in Pyro's param store would train nothing: ``pyro.module``
hands back the stored tensors while the network computes with its own. ``fit`` says so."""

import warnings

import pyro
import pytest
import torch

import pyro_reparam as pr
from pyro_reparam.models import DiscreteVAE
from pyro_reparam.train.probe import stale_module_params

X = (torch.rand(40, 16, generator=torch.Generator().manual_seed(0)) > 0.5).float()


def _fit(net):
    return pr.fit(net.model, net.guide, X, epochs=1, batch_size=20, progress=False,
                  log=lambda _m: None)  # fmt: skip


def _dvae(name="dvae"):
    return DiscreteVAE(16, num_latents=4, hidden=(8,), name=name)


def test_a_new_network_under_a_stored_name_is_warned_about_and_really_untrained():
    _fit(_dvae())
    second = _dvae()
    before = {k: v.detach().clone() for k, v in second.encoder.named_parameters()}
    with pytest.warns(UserWarning, match=r"'dvae.encoder.0.weight'.*pyro.clear_param_store"):
        _fit(second)
    after = dict(second.encoder.named_parameters())
    assert all(torch.equal(before[k], after[k]) for k in before)  # what the warning is about


@pytest.mark.parametrize("case", ["cleared", "renamed", "same network again"])
def test_no_warning_when_the_store_holds_the_networks_own_tensors(case):
    first = _dvae()
    _fit(first)
    if case == "cleared":
        pyro.clear_param_store()
        net = _dvae()
    else:
        net = _dvae("other") if case == "renamed" else first
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        _fit(net)


def test_only_pyro_module_parameters_are_checked():
    def model():
        pyro.param("loc", torch.zeros(2))  # a plain param whose stored value differs: fine

    pyro.param("loc", torch.ones(2))
    with pyro.poutine.trace(param_only=True) as tape:
        model()
    assert stale_module_params(tape.trace) == []
