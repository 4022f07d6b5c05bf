"""The optimizer of a :func:`~pyro_reparam.train.fit` run: its learning rates checked, its
learning-rate schedule stepped, and its identity compared on resume.

A ``pyro.optim`` LR scheduler (``pyro.optim.ExponentialLR({...})``, ``StepLR``,
``ReduceLROnPlateau`` ..., a :class:`~pyro.optim.lr_scheduler.PyroLRScheduler`) is stepped by
``fit`` once per epoch (``scheduler_step="epoch"``, after the epoch's steps; a plateau scheduler
gets the epoch's loss, ``-val_elbo`` when there is validation data, else ``-train_elbo``), after
each step (``"step"``, the step's loss), or by you in a callback (``"manual"``). Its state is in
the optimizer's ``get_state()`` and so in the checkpoint.

On resume, the checkpoint's optimizer state is compared with the optimizer passed: another
optimizer or scheduler class is refused (its state cannot carry over); other hyperparameters
(say a new ``lr``) are applied on purpose and said, the running moments kept; for a scheduler,
whose schedule was built on its arguments, any change is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from pyro.optim import PyroOptim
from pyro.optim.lr_scheduler import PyroLRScheduler
from pyro.params.param_store import (
    module_from_param_with_module_name,
    normalize_param_name,
    user_param_name,
)

SCHEDULER_STEPS = ("epoch", "step", "manual")
MAX_LR = 10.0
_IGNORED = ("params", "initial_lr")


def check_learning_rates(optim: PyroOptim, names: Iterable[str] = ()) -> None:
    """Refuse a learning rate that is not a number in ``[0, MAX_LR]``; per-parameter arguments
    (a callable) are checked for ``names``."""
    if callable(optim.pt_optim_args):
        for name in names:
            _check_lr(_optim_args(optim, name).get("lr"), f" for parameter {name!r}")
    else:
        _check_lr(optim.pt_optim_args.get("lr"), "")


def _check_lr(lr, where: str) -> None:
    if lr is None:
        return
    if isinstance(lr, torch.Tensor) and lr.numel() == 1:
        lr = lr.item()
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise TypeError(f"fit: optim's lr{where} must be a number, got {lr!r}")
    if not math.isfinite(lr) or lr < 0:
        raise ValueError(f"fit: optim's lr{where} is {lr}; a learning rate is a number >= 0")
    if lr > MAX_LR:
        raise ValueError(
            f"fit: optim's lr{where} is {lr}: above {MAX_LR:g} a step overshoots at once; "
            "typical rates are 1e-4 to 1e-1"
        )


def _optim_args(optim: PyroOptim, name: str) -> dict:
    """The optimizer arguments of parameter ``name`` (Pyro's one- or two-argument callables)."""
    args = optim.pt_optim_args
    if not callable(args):
        return dict(args)
    if optim.pt_optim_args_argc == 1:
        return dict(args(normalize_param_name(name)))
    return dict(args(module_from_param_with_module_name(name), user_param_name(name)))


def check_scheduler_step(optim: PyroOptim | None, scheduler_step: str) -> None:
    if scheduler_step not in SCHEDULER_STEPS:
        raise ValueError(
            f"fit: scheduler_step must be one of {SCHEDULER_STEPS}, got {scheduler_step!r}"
        )
    if scheduler_step != "epoch" and not isinstance(optim, PyroLRScheduler):
        raise ValueError(
            f"fit: scheduler_step={scheduler_step!r} steps a learning-rate scheduler, but optim "
            "is a plain optimizer; pass e.g. pyro.optim.ExponentialLR({...}) or drop it"
        )


def step_scheduler(optim: PyroOptim, when: str, scheduler_step: str, loss: float) -> None:
    """Step ``optim``'s schedule if it is a scheduler and ``when`` is the time asked for."""
    if not isinstance(optim, PyroLRScheduler) or when != scheduler_step:
        return
    plateau = issubclass(optim.pt_scheduler_constructor, torch.optim.lr_scheduler.ReduceLROnPlateau)
    if plateau:
        optim.step(loss)
    else:
        optim.step()


def optim_kind(optim: PyroOptim) -> dict[str, Any]:
    """The optimizer's classes (and a scheduler's own arguments), as checkpoint primitives."""
    scheduler = getattr(optim, "pt_scheduler_constructor", None)
    return {
        "optimizer": _qualname(optim.pt_optim_constructor),
        "scheduler": None if scheduler is None else _qualname(scheduler),
        "scheduler_args": {
            k: _describe(v) for k, v in sorted(getattr(optim, "kwargs", {}).items())
        },
    }


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _describe(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    return _qualname(value) if callable(value) else repr(value)


def reconcile(
    optim: PyroOptim, kind: Mapping, state: dict, where: str, say: Callable[[str], None]
) -> dict:
    """The checkpoint's optimizer ``state`` made fit for ``optim``: refused (ValueError, one
    line) if ``optim`` is another optimizer or scheduler or a scheduler with other arguments;
    changed hyperparameters of a plain optimizer written into it and said."""
    now = optim_kind(optim)
    for part in ("optimizer", "scheduler", "scheduler_args"):
        if kind.get(part) != now[part]:
            raise ValueError(
                f"fit: resume: {where} was trained with {part} {kind.get(part)}, this call "
                f"passes {now[part]}, whose state cannot carry over; resume with the same "
                "optimizer, or start afresh in another checkpoint_dir"
            )
    scheduled = now["scheduler"] is not None
    changes: dict[str, tuple] = {}
    for name, sub in state.items():
        group = (sub["optimizer"] if scheduled else sub)["param_groups"][0]
        for key, new in _defaults(optim, name).items():
            saved_key = "initial_lr" if scheduled and key == "lr" else key
            if key not in _IGNORED and saved_key in group and not _same(group[saved_key], new):
                changes.setdefault(key, (group[saved_key], new))
                if not scheduled:
                    group[key] = new
    if changes and scheduled:
        raise ValueError(
            f"fit: resume: the learning-rate schedule in {where} was built on "
            f"{_changes(changes, 0)}; this call passes {_changes(changes, 1)}: resume with the "
            "checkpoint's arguments, or start afresh in another checkpoint_dir"
        )
    if changes:
        say(
            f"resume: optimizer arguments changed from {where}: "
            + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())
            + "; the new values apply from here on, the optimizer's running state is kept"
        )
    return state


def _defaults(optim: PyroOptim, name: str) -> dict:
    """Every hyperparameter the optimizer would give parameter ``name``, defaults included."""
    probe = torch.zeros(1, requires_grad=True)
    return dict(optim.pt_optim_constructor([probe], **_optim_args(optim, name)).param_groups[0])


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return bool(torch.as_tensor(a).eq(torch.as_tensor(b)).all())
    return a == b


def _changes(changes: Mapping[str, tuple], i: int) -> str:
    return ", ".join(f"{k}={v[i]!r}" for k, v in changes.items())
