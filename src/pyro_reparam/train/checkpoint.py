"""Checkpoints of an SVI run that can be written atomically and never execute code on load.

A checkpoint holds plain tensors and Python scalars only: the param store's unconstrained
values, the ELBO's own state (``elbo.state_dict()``: baselines, for an ELBO that keeps any),
the optimizer state, the RNG states (torch, CUDA, numpy, python), the epoch and step, and the
history. Each tensor is saved once, by its owner: a parameter of the ELBO's state that is also
in the param store (a neural baseline the ELBO registered) goes with the ELBO.

It is written to ``<path>.tmp`` and renamed over ``<path>`` (atomic on POSIX), and read back
with ``torch.load(..., weights_only=True)``, whose unpickler refuses anything but tensors and
primitive containers: a tampered file raises :class:`CheckpointError` and runs nothing.
"""

from __future__ import annotations

import os
import pickle
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

FORMAT = "pyro-reparam-checkpoint"
PYRO_LAZY_STATE = "__baseline_avg_downstream_cost_"
"""Pyro's ``TraceGraph_ELBO`` keeps its decaying averages in the param store, made on the
first step and looked up by name: a restore creates them."""
VERSION = 2


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, foreign, tampered with, or for another model."""


def rng_state() -> dict[str, Any]:
    """Every RNG a Pyro run draws from, as tensors and primitives."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        (
            n["name"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (plus the format tag) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save`; anything else raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as e:
        raise CheckpointError(
            f"{path} is not a readable pyro-reparam checkpoint (refused without running it: "
            f"{str(e).splitlines()[0][:160]})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pyro-reparam checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {state.get('version')}; this pyro-reparam reads "
            f"version {VERSION}"
        )
    return state


def param_store_state(exclude: Iterable[torch.Tensor] = ()) -> dict[str, torch.Tensor]:
    """The unconstrained values of the parameters in Pyro's param store (detached copies),
    except those whose memory is one of the tensors of ``exclude`` (saved by their owner)."""
    store = pyro.get_param_store()
    exclude = list(exclude)
    return {
        name: p.detach().cpu().clone()
        for name, p in store._params.items()
        if not any(p.is_set_to(t) for t in exclude)
    }


def snapshot(elbo) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(param store values, the ELBO's state), detached CPU copies, each tensor saved once."""
    state = elbo_state(elbo)
    params = param_store_state(exclude=state.values())
    return params, {k: v.detach().cpu().clone() for k, v in state.items()}


def elbo_state(elbo) -> dict[str, torch.Tensor]:
    """``elbo.state_dict()`` for an ELBO that keeps state of its own, else ``{}``."""
    get = getattr(elbo, "state_dict", None)
    return dict(get()) if callable(get) else {}


def restore_elbo_state(elbo, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """``elbo.load_state_dict(state)``; a non-empty state for an ELBO without one is refused."""
    load = getattr(elbo, "load_state_dict", None)
    if callable(load):
        load(state)
    elif state:
        raise CheckpointError(
            f"{path} holds the state of an ELBO with baselines ({sorted(state)[:3]}), but this "
            f"run's {type(elbo).__name__} keeps none; resume with the ELBO it was written with"
        )


def restore_param_store(values: dict[str, torch.Tensor], path: str | Path = "checkpoint") -> None:
    """Copy saved unconstrained values *into* the existing parameters (in place), so that
    ``nn.Module`` parameters registered with ``pyro.module`` stay the same tensors. Every saved
    parameter must already exist (run the model and guide once first)."""
    store = pyro.get_param_store()
    for name in sorted(set(values) - set(store.keys())):
        if name.startswith(PYRO_LAZY_STATE):
            pyro.param(name, values[name].clone())
    missing = sorted(set(values) - set(store.keys()))
    if missing:
        raise CheckpointError(
            f"{path} holds parameters this model and guide do not create: {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}; was it written by another model?"
        )
    with torch.no_grad():
        for name, value in values.items():
            target = store._params[name]
            if target.shape != value.shape:
                raise CheckpointError(
                    f"{path}: parameter {name!r} has shape {tuple(value.shape)} there but "
                    f"{tuple(target.shape)} here; was it written by another model?"
                )
            target.copy_(value)
