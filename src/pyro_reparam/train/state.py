"""What a checkpoint of a :func:`~pyro_reparam.train.fit` run holds, how it is taken and put
back, and the checks that keep a bad state off the disk.

A checkpoint is a dict of plain tensors and Python scalars: ``params`` (the unconstrained values
of this run's parameters in Pyro's param store, by name), ``optim`` (the optimizer's
``get_state()``) and ``optim_kind`` (its classes), ``ranks`` (per data-parallel rank: the RNG
states, those at the start of the epoch, and the ELBO's own state, ``elbo.state_dict()``:
baselines), ``epoch``/``step``/``partial_loss`` (where the run stands), ``history``,
``stopped_early`` and ``run`` (the seed, data size, batch size and number of ranks it needs
again), and ``zero_grads`` (the parameters whose gradient ``SVI.step`` would hold as zeros:
:func:`~pyro_reparam.train.step.svi_step`). Each tensor is saved once, by its owner: a
parameter of the ELBO's state that is also in the param store (a neural baseline the ELBO
registered) goes with the ELBO.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

from pyro_reparam.train.checkpoint import CheckpointError

PYRO_LAZY_STATE = "__baseline_avg_downstream_cost_"
"""Pyro's ``TraceGraph_ELBO`` keeps its decaying averages in the param store, made on the
first step and looked up by name: a restore creates them."""
LAYOUT = {
    "params": dict, "optim": dict, "optim_kind": dict, "ranks": list, "epoch": int, "step": int,
    "partial_loss": float, "history": list, "stopped_early": bool, "run": dict,
}  # fmt: skip


def check_layout(state: Mapping[str, Any], path: Path) -> None:
    """Refuse a checkpoint that lacks a part :func:`fit` needs (one line naming it)."""
    for key, kind in LAYOUT.items():
        if not isinstance(state.get(key), kind):
            got = type(state.get(key)).__name__ if key in state else "nothing"
            raise CheckpointError(
                f"{path} is not a pyro-reparam training checkpoint: its {key!r} is {got}, "
                f"not a {kind.__name__}; start afresh in another checkpoint_dir"
            )


def elbo_state(elbo) -> dict[str, torch.Tensor]:
    """``elbo.state_dict()`` (detached CPU copies) for an ELBO that keeps state, else ``{}``."""
    get = getattr(elbo, "state_dict", None)
    state = dict(get()) if callable(get) else {}
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def param_store_state(
    names: Iterable[str], exclude: Iterable[torch.Tensor] = ()
) -> dict[str, torch.Tensor]:
    """The unconstrained values (detached CPU copies) of the parameters ``names`` of Pyro's
    param store, except those whose memory is one of ``exclude`` (saved by their owner)."""
    store = dict(pyro.get_param_store().named_parameters())
    exclude = list(exclude)
    return {
        name: store[name].detach().cpu().clone()
        for name in sorted(names)
        if name in store and not any(store[name].is_set_to(t) for t in exclude)
    }


def run_params(elbo, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """The run's parameters ``names``, less those the ELBO's state saves."""
    get = getattr(elbo, "state_dict", None)
    return param_store_state(names, exclude=list(get().values()) if callable(get) else [])


def restore_elbo_state(elbo, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """``elbo.load_state_dict(state)``; a non-empty state for an ELBO without one is refused."""
    load = getattr(elbo, "load_state_dict", None)
    if callable(load):
        load(state)
    elif state:
        raise CheckpointError(
            f"{path} holds the state of an ELBO with baselines ({sorted(state)[:3]}), but this "
            f"run's {type(elbo).__name__} keeps none; resume with the ELBO it was written with"
        )


def restore_param_store(values: Mapping[str, torch.Tensor], path: Path) -> None:
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
    params = dict(store.named_parameters())
    with torch.no_grad():
        for name, value in values.items():
            target = params[name]
            if target.shape != value.shape:
                raise CheckpointError(
                    f"{path}: parameter {name!r} has shape {tuple(value.shape)} there but "
                    f"{tuple(target.shape)} here; was it written by another model?"
                )
            target.copy_(value)


def nonfinite_parts(state: Mapping[str, Any]) -> list[str]:
    """What of a checkpoint state holds NaN or inf: parameters, optimizer and ELBO state."""
    bad = [f"parameter {k!r}" for k, v in state["params"].items() if not _finite(v)]
    for name, sub in state["optim"].items():
        bad += [f"the optimizer's {key} of {name!r}" for key in _nonfinite_keys(sub)]
    for rank in state["ranks"]:
        bad += [f"the ELBO's state {k!r}" for k, v in rank["elbo"].items() if not _finite(v)]
    return list(dict.fromkeys(bad))


def _finite(t: torch.Tensor) -> bool:
    return not t.is_floating_point() or bool(torch.isfinite(t).all())


def _nonfinite_keys(tree, key: str = "state") -> list[str]:
    if isinstance(tree, torch.Tensor):
        return [] if _finite(tree) else [key]
    if isinstance(tree, Mapping):
        return [k for sub_key, v in tree.items() for k in _nonfinite_keys(v, str(sub_key))]
    if isinstance(tree, (list, tuple)):
        return [k for v in tree for k in _nonfinite_keys(v, key)]
    return []  # Python numbers: hyperparameters, and a plateau scheduler's best = inf


def plain_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The history's records as plain values a ``weights_only`` load reads back (numpy and
    0-d tensor scalars become Python numbers); a value a callback added that is none of these
    raises a one-line TypeError naming its key."""
    return [{k: _plain(v, f"record[{k!r}] of epoch {r['epoch']}") for k, v in r.items()}
            for r in records]  # fmt: skip


def _plain(value, where: str):
    if isinstance(value, np.generic):  # before float: np.float64 is one
        return _plain(value.item(), where)
    if value is None:
        return None
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, torch.Tensor):
        return value.item() if value.dim() == 0 else value.detach().cpu().clone()
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    raise TypeError(
        f"fit: a callback put a {type(value).__name__} in {where}; a checkpoint keeps numbers, "
        "strings, tensors and lists or dicts of them: convert it (e.g. float(...))"
    )
