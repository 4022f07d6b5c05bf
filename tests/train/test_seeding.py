"""``fit(seed=s)`` gives the same run whatever the caller drew before, on every path: an
explicit ELBO, a routed one (``elbo=None``, whose planning runs the guide and so initializes its
parameters), a Dataset, a shuffling DataLoader; and in two fresh processes."""

import subprocess
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal, init_to_feasible, init_to_median
from torch.utils.data import DataLoader, TensorDataset

import pyro_reparam as pr

SCRIPT = Path(__file__).with_name("train_script.py")


def model(x, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(x @ w, 0.5), obs=y)


def _data(n=32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 2, generator=g)
    return x, x @ torch.tensor([1.0, -1.0]) + 0.5 * torch.randn(n, generator=g)


PATHS = {
    "explicit ELBO": lambda: {"data": _data(), "elbo": Trace_ELBO()},
    "routed ELBO": lambda: {"data": _data(), "elbo": None},
    "routed ELBO, guide initialized by sampling": lambda: {
        "data": _data(),
        "elbo": None,
        "init_loc_fn": init_to_median,
    },
    "Dataset": lambda: {"data": TensorDataset(*_data()), "elbo": Trace_ELBO()},
    "shuffling DataLoader": lambda: {
        "data": DataLoader(TensorDataset(*_data()), batch_size=8, shuffle=True),
        "elbo": Trace_ELBO(),
    },
}


def _run(path: str, caller_seed: int):
    pyro.clear_param_store()
    torch.manual_seed(caller_seed)
    torch.rand(caller_seed)  # the caller drew some numbers
    kw = PATHS[path]()
    guide = AutoNormal(model, init_loc_fn=kw.pop("init_loc_fn", init_to_feasible))
    history = pr.fit(model, guide, kw.pop("data"), epochs=2, batch_size=8, seed=3,
                     progress=False, log=lambda _m: None, **kw)  # fmt: skip
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
    return history.train_elbo, params


@pytest.mark.parametrize("path", sorted(PATHS))
def test_the_same_seed_gives_the_same_run_whatever_the_caller_drew(path):
    (elbo_1, params_1), (elbo_2, params_2) = _run(path, 1), _run(path, 2)
    assert elbo_1 == elbo_2
    assert params_1.keys() == params_2.keys()
    assert all(torch.equal(params_1[k], params_2[k]) for k in params_1)


@pytest.mark.slow
def test_two_fresh_processes_agree(tmp_path):
    outs = []
    for caller in (1, 2):
        out = tmp_path / f"p{caller}"
        subprocess.run([sys.executable, str(SCRIPT), str(out), "--epochs", "2", "--scramble",
                        str(caller)], check=True, timeout=120, capture_output=True)  # fmt: skip
        outs.append(torch.load(out / "final0.pt", weights_only=True))
    a, b = outs
    assert a["elbo"] == b["elbo"]
    assert all(torch.equal(a["params"][k], b["params"][k]) for k in a["params"])
