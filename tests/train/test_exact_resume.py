"""Every resume path is exact or refused: Ctrl-C at any step, callbacks that draw random
numbers, learning-rate schedulers, a DataLoader's shuffling; another optimizer, learning rate,
seed or batch size, fewer epochs, a run a callback stopped."""

import os
import signal

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from torch.utils.data import DataLoader, TensorDataset

import pyro_reparam as pr
from pyro_reparam.train.checkpoint import load
from pyro_reparam.train.interrupt import Interrupt

EPOCHS, STEPS = 3, 4  # 32 rows in batches of 8


def model(x, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(x @ w, 0.5), obs=y)


def _data(n=32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 2, generator=g)
    return x, x @ torch.tensor([1.0, -1.0]) + 0.5 * torch.randn(n, generator=g)


def _noisy_callback(epoch, record):
    """Draws from the global RNG, as a callback computing a Monte Carlo metric does."""
    record["noise"] = torch.rand(()).item()
    record["np_metric"] = np.float64(epoch) / 2  # a numpy scalar: saved as a float


def _fit(folder, epochs=EPOCHS, resume=False, interrupt_at=None, data=None,
         signum=signal.SIGINT, **kw):  # fmt: skip
    """A fit from an empty param store, after the caller drew other random numbers;
    ``interrupt_at``: ``signum`` in the middle of that training step (counted from 1)."""
    pyro.clear_param_store()
    torch.manual_seed(99 + int(resume))
    calls = {"n": 0}

    def interrupted_model(x, y):
        if torch.is_grad_enabled():  # training steps, not setup
            calls["n"] += 1
            if calls["n"] == interrupt_at:
                os.kill(os.getpid(), signum)
        return model(x, y)

    kw.setdefault("callbacks", [_noisy_callback])
    history = pr.fit(interrupted_model, AutoNormal(model), data or _data(), elbo=Trace_ELBO(),
                     epochs=epochs, batch_size=8, checkpoint_dir=folder, resume=resume,
                     progress=False, log=lambda _m: None, **kw)  # fmt: skip
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
    return history, params


def _assert_same_run(a, b):
    (ha, pa), (hb, pb) = a, b
    assert ha.train_elbo == hb.train_elbo
    for key in ("noise", "np_metric"):
        assert [r.get(key) for r in ha.records] == [r.get(key) for r in hb.records]
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return _fit(tmp_path_factory.mktemp("full"))


@pytest.mark.parametrize("step", [1, 2, STEPS, STEPS + 3, EPOCHS * STEPS])
def test_ctrl_c_at_any_step_resumes_to_the_uninterrupted_run(tmp_path, uninterrupted, step):
    """SIGINT lands inside the model during training step ``step``: the step finishes, the
    checkpoint is written, KeyboardInterrupt is raised; the resumed run is the same run."""
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, interrupt_at=step)
    state = load(tmp_path / "checkpoint.pt")
    done = state["epoch"] * STEPS + state["step"]
    assert done == step  # the step it landed in counted, nothing after it
    _assert_same_run(_fit(tmp_path, resume=True), uninterrupted)


def test_sigterm_is_deferred_like_ctrl_c_and_a_second_one_acts_at_once(tmp_path, uninterrupted):
    """SIGTERM (a scheduler's preemption, torchrun's agent stopping its workers) stops after
    the step it lands in with the checkpoint written; after fit the handler is the old one."""
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, interrupt_at=STEPS + 1, signum=signal.SIGTERM)
    state = load(tmp_path / "checkpoint.pt")
    assert state["epoch"] * STEPS + state["step"] == STEPS + 1
    assert signal.getsignal(signal.SIGTERM) == before
    _assert_same_run(_fit(tmp_path, resume=True), uninterrupted)
    with Interrupt() as interrupt:
        signal.raise_signal(signal.SIGTERM)
        assert interrupt.requested and interrupt.signal_name == "SIGTERM"
        assert signal.getsignal(signal.SIGTERM) == before  # the next one is not deferred


def test_a_resumed_run_after_a_finished_epoch_is_the_same_run(tmp_path, uninterrupted):
    _fit(tmp_path, epochs=1)
    assert load(tmp_path / "checkpoint.pt")["history"][0]["noise"] is not None
    _assert_same_run(_fit(tmp_path, resume=True), uninterrupted)


def _loader_fit(folder, resume=False, interrupt_at=None):
    loader = DataLoader(TensorDataset(*_data()), batch_size=8, shuffle=True)
    return _fit(folder, resume=resume, interrupt_at=interrupt_at, data=loader)


def test_a_shuffling_dataloader_resumes_mid_epoch_in_the_same_order(tmp_path):
    want = _loader_fit(tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        _loader_fit(tmp_path / "cut", interrupt_at=STEPS + 2)
    _assert_same_run(_loader_fit(tmp_path / "cut", resume=True), want)


SCHEDULERS = {
    "ExponentialLR": lambda: pyro.optim.ExponentialLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.05}, "gamma": 0.5}),
    "StepLR": lambda: pyro.optim.StepLR(
        {"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.01}, "step_size": 2,
         "gamma": 0.1}),
    "ReduceLROnPlateau": lambda: pyro.optim.ReduceLROnPlateau(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.05}, "patience": 0,
         "factor": 0.5}),
}  # fmt: skip


def _lr(optim) -> float:
    state = next(iter(optim.get_state().values()))
    return state["optimizer"]["param_groups"][0]["lr"]


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_lr_schedulers_are_stepped_per_epoch_and_resume_exactly(tmp_path, name):
    optim = SCHEDULERS[name]()
    want = _fit(tmp_path / "full", epochs=4, optim=optim)
    if name == "ExponentialLR":
        assert _lr(optim) == pytest.approx(0.05 * 0.5**4)
    elif name == "StepLR":
        assert _lr(optim) == pytest.approx(0.01 * 0.1**2)
    _fit(tmp_path / "cut", epochs=2, optim=SCHEDULERS[name]())
    resumed_optim = SCHEDULERS[name]()
    _assert_same_run(_fit(tmp_path / "cut", epochs=4, resume=True, optim=resumed_optim), want)
    assert _lr(resumed_optim) == _lr(optim)


def test_a_scheduler_stepped_by_a_callback_resumes_exactly(tmp_path):
    def run(folder, epochs, resume=False):
        optim = SCHEDULERS["ExponentialLR"]()
        step = [_noisy_callback, lambda e, r: optim.step()]
        return _fit(folder, epochs=epochs, resume=resume, optim=optim, callbacks=step,
                    scheduler_step="manual")  # fmt: skip

    want = run(tmp_path / "full", 4)
    run(tmp_path / "cut", 2)
    _assert_same_run(run(tmp_path / "cut", 4, resume=True), want)


def test_another_optimizer_on_resume_is_refused_in_one_line(tmp_path):
    _fit(tmp_path, epochs=1, optim=pyro.optim.Adam({"lr": 0.01}))
    adam_to_sgd = r"torch\.optim\.adam\.Adam.*torch\.optim\.sgd\.SGD"
    with pytest.raises(ValueError, match=adam_to_sgd) as info:
        _fit(tmp_path, resume=True, optim=pyro.optim.SGD({"lr": 0.01, "momentum": 0.9}))
    assert "\n" not in str(info.value)


def test_a_new_learning_rate_on_resume_is_applied_and_said(tmp_path):
    _fit(tmp_path, epochs=1, optim=pyro.optim.Adam({"lr": 0.01}))
    before = {k: v.clone() for k, v in load(tmp_path / "checkpoint.pt")["params"].items()}
    said = []
    pyro.clear_param_store()
    pr.fit(model, AutoNormal(model), _data(), elbo=Trace_ELBO(), epochs=2, batch_size=8,
           optim=pyro.optim.Adam({"lr": 0.0}), checkpoint_dir=tmp_path, resume=True,
           progress=False, log=said.append)  # fmt: skip
    assert any("lr 0.01 -> 0.0" in m for m in said)
    after = dict(pyro.get_param_store().named_parameters())
    assert all(torch.equal(after[k], v) for k, v in before.items())  # lr=0 froze them


def test_a_new_learning_rate_for_a_scheduler_is_refused(tmp_path):
    _fit(tmp_path, epochs=1, optim=SCHEDULERS["ExponentialLR"]())
    other = pyro.optim.ExponentialLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.5}, "gamma": 0.5}
    )
    with pytest.raises(ValueError, match=r"built on lr=0\.05; this call passes lr=0\.5"):
        _fit(tmp_path, resume=True, optim=other)


@pytest.mark.parametrize(
    ("change", "match"),
    [({"epochs": 1}, "epochs=1 but .* has finished 2 epochs"),
     ({"seed": 5}, "seed=0, this call has seed=5"),
     ({"data": _data(40)}, "num_data=32, this call has num_data=40")],
)  # fmt: skip
def test_a_resume_that_does_not_fit_the_checkpoint_is_refused(tmp_path, change, match):
    _fit(tmp_path, epochs=2)
    with pytest.raises(ValueError, match=match) as info:
        _fit(tmp_path, resume=True, **{"epochs": EPOCHS, **change})
    assert "\n" not in str(info.value)


def test_a_run_stopped_by_a_callback_stays_stopped_on_resume(tmp_path):
    stop = [_noisy_callback, lambda e, r: e == 2]
    first, _ = _fit(tmp_path, epochs=5, callbacks=stop)
    again, _ = _fit(tmp_path, epochs=5, resume=True, callbacks=stop)
    assert first.stopped_early and again.stopped_early
    assert len(again.records) == 2 and again.train_elbo == first.train_elbo
