"""A parameter that some steps' backward does not reach: ``SVI.step`` resets gradients to zero
tensors, so from its first gradient on it is stepped at every step (Adam's moments keep moving
it). ``fit`` must do the same, bit for bit, and carry that across a resume."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

import pyro_reparam as pr

N, B, EPOCHS, SEED = 32, 8, 3, 10


def model(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)


def guide(x):
    """``b`` enters the loss only for batches whose first value is positive."""
    a = pyro.param("a", torch.tensor(0.3))
    b = pyro.param("b", torch.tensor(-0.2))
    loc = a + b if x[0] > 0 else a
    pyro.sample("unused", dist.Normal(loc, 1.0))


def full_model(x):
    pyro.sample("unused", dist.Normal(0.0, 1.0))
    model(x)


def _data():
    return torch.randn(N, generator=torch.Generator().manual_seed(2))


def _fit(epochs=EPOCHS, **kw):
    pyro.clear_param_store()
    pr.fit(full_model, guide, _data(), elbo=Trace_ELBO(), optim=pyro.optim.Adam({"lr": 0.1}),
           epochs=epochs, batch_size=B, seed=SEED, progress=False, log=lambda _m: None,
           **kw)  # fmt: skip
    return {k: pyro.param(k).detach().clone() for k in ("a", "b")}


def _svi():
    """The same run with ``pyro.infer.SVI`` and fit's documented seeding and permutations."""
    pyro.clear_param_store()
    x = _data()
    svi = SVI(full_model, guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    pyro.set_rng_seed(SEED)
    with torch.no_grad():
        pyro.poutine.replay(full_model, trace=pyro.poutine.trace(guide).get_trace(x[:B]))(x[:B])
    pyro.set_rng_seed(SEED)
    reached = []
    for epoch in range(EPOCHS):
        g = torch.Generator().manual_seed(SEED * 1_000_003 + epoch)
        perm = torch.randperm(N, generator=g)
        for i in range(0, N, B):
            batch = x[perm[i : i + B]]
            reached.append(bool(batch[0] > 0))
            svi.step(batch)
    return {k: pyro.param(k).detach().clone() for k in ("a", "b")}, reached


def test_fit_steps_an_unreached_parameter_as_svi_does():
    reference, reached = _svi()
    assert any(reached) and not all(reached[reached.index(True) :])  # b is missed after use
    fitted = _fit()
    for name in ("a", "b"):
        assert torch.equal(fitted[name], reference[name]), name


@pytest.mark.parametrize("first", [1, 2])
def test_a_resumed_run_keeps_stepping_it(tmp_path, first):
    _, reached = _svi()
    at = first * N // B  # the resumed run's first step misses b, which an earlier one reached
    assert any(reached[:at]) and not reached[at]
    uninterrupted = _fit()
    _fit(epochs=first, checkpoint_dir=tmp_path)
    resumed = _fit(checkpoint_dir=tmp_path, resume=True)
    for name in ("a", "b"):
        assert torch.equal(resumed[name], uninterrupted[name]), name
