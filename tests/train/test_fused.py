"""fit's fused optimizer step (pyro_reparam.train.fused): the same numbers as Pyro's
per-parameter steps, bit for bit on the CPU, and the same optimizer state."""

import pyro
import pytest
import torch

from pyro_reparam.train.fused import FusedStep

OPTIMS = {
    "ClippedAdam": lambda: pyro.optim.ClippedAdam({"lr": 0.05, "clip_norm": 0.5, "lrd": 0.99}),
    "Adam": lambda: pyro.optim.Adam({"lr": 0.05}),
    "SGD momentum": lambda: pyro.optim.SGD({"lr": 0.05, "momentum": 0.9}),
    "SGD": lambda: pyro.optim.SGD({"lr": 0.05}),
    "Adam clip_args": lambda: pyro.optim.Adam({"lr": 0.05}, {"clip_norm": 1.0}),
    "Adam amsgrad decay": lambda: pyro.optim.Adam(
        {"lr": 0.05, "amsgrad": True, "weight_decay": 0.01}
    ),
    "AdamW": lambda: pyro.optim.AdamW({"lr": 0.05, "weight_decay": 0.1}),
    "RMSprop": lambda: pyro.optim.RMSprop({"lr": 0.01, "momentum": 0.5}),
    "Adagrad": lambda: pyro.optim.Adagrad({"lr": 0.05}),
    "SGD nesterov foreach=False": lambda: pyro.optim.SGD(
        {"lr": 0.05, "momentum": 0.9, "nesterov": True, "foreach": False}
    ),
}


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(5, 3), (5,), (1, 5), ()]
    return [torch.randn(s, generator=g).requires_grad_() for s in shapes]


def _grads(params, step, missing=()):
    g = torch.Generator().manual_seed(100 + step)
    for i, p in enumerate(params):
        p.grad = 3 * torch.randn(p.shape, generator=g)
        if (i, step % 2) in missing or (i, None) in missing:
            p.grad = None


def _stored_params():
    """Fresh parameters in an empty store (PyroOptim names them through it)."""
    pyro.clear_param_store()
    params = _params()
    for i, p in enumerate(params):
        pyro.get_param_store()[f"p{i}"] = p
    return [pyro.get_param_store()[f"p{i}"].unconstrained() for i in range(len(params))]


def _run(optim, stepper, steps=6, missing=()):
    params = _stored_params()
    step = stepper(optim) if stepper else optim
    for t in range(steps):
        _grads(params, t, missing)
        step(params)
    return [p.detach().clone() for p in params], optim.get_state(), step


@pytest.mark.parametrize("name", list(OPTIMS))
def test_fused_step_is_the_per_parameter_step_bit_for_bit(name):
    plain, plain_state, _ = _run(OPTIMS[name](), None)
    fused, fused_state, stepper = _run(OPTIMS[name](), FusedStep)
    assert stepper.fused == 5  # the first step makes the optimizers, the others are fused
    for a, b in zip(plain, fused, strict=True):
        assert torch.equal(a, b)
    assert plain_state.keys() == fused_state.keys()
    for key, sub in plain_state.items():
        other = fused_state[key]
        assert sub["param_groups"] == other["param_groups"]  # lr decayed alike (lrd)
        assert sub["state"].keys() == other["state"].keys()  # no state where Pyro keeps none
        for k, v in sub["state"].get(0, {}).items():
            w = other["state"][0][k]
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(w)), (key, k)


@pytest.mark.parametrize("name", ["ClippedAdam", "Adam", "SGD momentum", "SGD"])
@pytest.mark.parametrize(
    "missing", [((3, None),), ((1, 0), (3, None))], ids=["never", "every other step"]
)
def test_parameters_without_a_gradient_are_left_as_pyro_leaves_them(name, missing):
    """A parameter the step gave no gradient (never, or at every other step): untouched, its
    optimizer's group decays ClippedAdam's lr all the same, and the others fused."""
    plain, plain_state, _ = _run(OPTIMS[name](), None, missing=missing)
    fused, fused_state, stepper = _run(OPTIMS[name](), FusedStep, missing=missing)
    assert stepper.fused == 5
    assert all(torch.equal(a, b) for a, b in zip(plain, fused, strict=True))
    assert torch.equal(fused[3], _params()[3].detach())  # never had a gradient
    assert plain_state.keys() == fused_state.keys()
    for key, sub in plain_state.items():
        assert sub["param_groups"] == fused_state[key]["param_groups"], key
        assert sub["state"].keys() == fused_state[key]["state"].keys(), key
        for k, v in sub["state"].get(0, {}).items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(fused_state[key]["state"][0][k]))


def test_different_hyperparameters_or_schedulers_step_as_pyro_does():
    per_param = pyro.optim.Adam(lambda name: {"lr": 0.1 if name == "p0" else 0.01})
    _, _, stepper = _run(per_param, FusedStep)
    assert stepper.fused == 0
    sched = pyro.optim.ExponentialLR({"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.1},
                                      "gamma": 0.9})  # fmt: skip
    plain, _, _ = _run(sched, None)
    pyro.clear_param_store()
    sched2 = pyro.optim.ExponentialLR({"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.1},
                                       "gamma": 0.9})  # fmt: skip
    fused, _, stepper = _run(sched2, FusedStep)
    assert stepper.fused == 0
    assert all(torch.equal(a, b) for a, b in zip(plain, fused, strict=True))


def test_an_lr_changed_between_steps_is_applied():
    ref = pyro.optim.ClippedAdam({"lr": 0.05})
    stepper = FusedStep(ref)
    params = _stored_params()
    for t in range(3):
        _grads(params, t)
        if t == 2:
            for sub in ref.optim_objs.values():
                sub.param_groups[0]["lr"] = 0.0
        before = [p.detach().clone() for p in params]
        stepper(params)
    assert all(torch.equal(a, p.detach()) for a, p in zip(before, params, strict=True))


def test_a_hook_on_a_parameters_optimizer_runs_as_pyro_runs_it():
    calls = []
    optim = pyro.optim.Adam({"lr": 0.05})
    stepper = FusedStep(optim)
    params = _stored_params()
    _grads(params, 0)
    stepper(params)  # Pyro makes the per-parameter optimizers
    optim.optim_objs[params[0]].register_step_pre_hook(lambda *_: calls.append(1))
    for t in range(1, 3):
        _grads(params, t)
        stepper(params)
    assert calls == [1, 1] and stepper.fused == 0
