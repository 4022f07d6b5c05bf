"""The argument checks of :func:`~pyro_reparam.train.fit`: one-line errors that name the
argument, what it got and what to pass instead. They run before anything is traced, seeded or
written."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable
from pathlib import Path

import torch
from pyro.infer import ELBO
from pyro.optim import PyroOptim

from pyro_reparam.train.optimizers import check_learning_rates, check_scheduler_step

MAX_SEED = 2**32
"""numpy's seeds are below 2**32, and ``seed`` seeds numpy too (``pyro.set_rng_seed``)."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device`` (``None`` -> CPU), with an error that says what to pass."""
    if device is None:
        return torch.device("cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(
            f"fit: device must be a string or torch.device such as 'cpu' or 'cuda:0', got "
            f"{type(device).__name__} {device!r}"
        )
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"fit: device={device!r} is not a device; use 'cpu', 'cuda' or 'cuda:N'"
        ) from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"fit: device type {dev.type!r} is not supported; use 'cpu' or 'cuda'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("fit: device='cuda' but no CUDA device is available; use device='cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(
            f"fit: device={device!r} but this machine has {torch.cuda.device_count()} CUDA "
            "device(s); use 'cuda' or an index below that"
        )
    return dev


def check_options(model, guide, elbo, optim, epochs, batch_size, seed, checkpoint_dir, resume,
                  progress, callbacks, clip_norm, jit, distributed, log,
                  scheduler_step) -> list[Callable]:  # fmt: skip
    """Check every argument but the data and the device; returns the callbacks as a list."""
    for name, fn in (("model", model), ("guide", guide), ("log", log)):
        if not callable(fn):
            raise TypeError(f"fit: {name} must be a callable, got {type(fn).__name__} {fn!r}")
    _check_elbo(elbo)
    _check_optim(optim)
    check_scheduler_step(optim, scheduler_step)
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"fit: {name} must be a positive integer, got {value!r}")
    if not _is_int(seed) or not 0 <= seed < MAX_SEED:
        raise ValueError(f"fit: seed must be an integer in [0, 2**32), got {seed!r}")
    for name, value in (("resume", resume), ("progress", progress), ("jit", jit)):
        if not isinstance(value, bool):
            raise TypeError(f"fit: {name} must be True or False, got {value!r}")
    if distributed is not None and not isinstance(distributed, bool):
        raise TypeError(f"fit: distributed must be None, True or False, got {distributed!r}")
    check_folder(checkpoint_dir)
    if resume and checkpoint_dir is None:
        raise ValueError("fit: resume=True needs checkpoint_dir=... (where the checkpoint is)")
    if clip_norm is not None and (
        not isinstance(clip_norm, numbers.Real)
        or isinstance(clip_norm, bool)
        or not 0 < clip_norm < math.inf
    ):
        raise ValueError(f"fit: clip_norm must be a finite number > 0 (or None), got {clip_norm!r}")
    return _callbacks(callbacks)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_elbo(elbo) -> None:
    if isinstance(elbo, type) and issubclass(elbo, ELBO):
        raise TypeError(
            f"fit: elbo is the class {elbo.__name__}; pass an instance: {elbo.__name__}()"
        )
    if elbo is not None and not isinstance(elbo, ELBO):
        raise TypeError(
            f"fit: elbo must be a pyro.infer.ELBO (e.g. Trace_ELBO()), got {type(elbo).__name__}"
        )


def _check_optim(optim) -> None:
    if optim is None or isinstance(optim, PyroOptim):
        if optim is not None:
            check_learning_rates(optim)
        return
    if isinstance(optim, torch.optim.Optimizer) or (
        isinstance(optim, type) and issubclass(optim, torch.optim.Optimizer)
    ):
        hint = "a torch.optim optimizer; wrap it the Pyro way"
    elif callable(optim):
        hint = f"the constructor {getattr(optim, '__name__', optim)!r}; call it with its arguments"
    else:
        hint = f"a {type(optim).__name__}"
    raise TypeError(
        f"fit: optim must be a Pyro optimizer such as pyro.optim.Adam({{'lr': 1e-3}}), got {hint}"
    )


def check_folder(checkpoint_dir) -> None:
    if checkpoint_dir is None:
        return
    if not isinstance(checkpoint_dir, (str, os.PathLike)):
        raise TypeError(
            f"fit: checkpoint_dir must be a folder path (str or Path), got "
            f"{type(checkpoint_dir).__name__}"
        )
    if str(checkpoint_dir) == "":
        raise ValueError("fit: checkpoint_dir is an empty string; pass a folder, e.g. 'runs/x'")
    path = Path(checkpoint_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"fit: checkpoint_dir={str(path)!r} is a file, not a folder; pass the folder that "
            "holds (or will hold) checkpoint.pt"
        )


def _callbacks(callbacks) -> list[Callable]:
    if callable(callbacks):
        raise TypeError("fit: callbacks must be a list of callables; wrap it: callbacks=[f]")
    if isinstance(callbacks, (str, bytes)) or not hasattr(callbacks, "__iter__"):
        raise TypeError(
            f"fit: callbacks must be a list of callables f(epoch, record), got {callbacks!r}"
        )
    callbacks = list(callbacks)
    for cb in callbacks:
        if not callable(cb):
            raise TypeError(f"fit: callbacks must be callables f(epoch, record), got {cb!r}")
    return callbacks
