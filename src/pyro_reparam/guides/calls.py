"""What the guide asks at a call: its encoders' outputs, and the model's own site."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import pyro
import pyro.poutine as poutine
import torch
from pyro.nn.module import PyroModule
from pyro.poutine.runtime import NonlocalExit

from pyro_reparam.guides import discrete


def encoder_params(encoders: PyroModule, name: str, keys, args, kwargs) -> dict:
    """``{key: tensor}`` from ``encoders.<name>(*args, **kwargs)``: a tensor, a tuple in the
    order of ``keys`` or a dict. A plain ``nn.Module`` is registered with ``pyro.module`` (its
    parameters follow the store, as a ``PyroParam`` does)."""
    net = functools.reduce(lambda m, k: m._modules[k], name.split("."), encoders)
    if not isinstance(net, PyroModule):
        pyro.module(f"{encoders._pyro_name}.{name}", net, update_module_params=True)
    out = net(*args, **kwargs)
    if isinstance(out, torch.Tensor):
        out = (out,)
    if not isinstance(out, Mapping):
        out = tuple(out)
        if len(out) != len(keys):
            raise ValueError(
                f"AutoReparamGuide: encoders[{name!r}] returned {len(out)} tensor(s); "
                f"site {name!r} needs {keys} (a tuple in this order, or a dict)"
            )
        out = dict(zip(keys, out, strict=True))
    missing = set(keys) - set(out)
    if missing:
        raise ValueError(
            f"AutoReparamGuide: encoders[{name!r}] returned keys {sorted(out)}; "
            f"site {name!r} needs {keys}"
        )
    return {key: out[key] for key in keys}


def model_site(model: Callable, name: str, values: dict, plates: dict, args, kwargs):
    """``(fn, mask)`` of the model's site ``name`` at this call. The model runs hidden from
    every handler outside, on a copy of the random streams, up to that site only, with this
    call's subsample indices and the values the guide drew so far."""
    data = dict(values)
    for plate in plates.values():
        if plate.subsample_size != plate.size:
            data[plate.name] = plate.indices
    conditioned = poutine.condition(model, data=data)
    try:
        with poutine.block(), _forked_rng():
            poutine.escape(conditioned, escape_fn=lambda msg: msg["name"] == name)(*args, **kwargs)
    except NonlocalExit as stop:
        return stop.site["fn"], discrete.mask_of(stop.site["fn"], stop.site["mask"])
    raise ValueError(
        f"AutoReparamGuide: site {name!r} is in the prototype trace but the model did not "
        "sample it at this call; the guide supports models whose latent sites are fixed"
    )


def _forked_rng():
    """A copy of the CPU (and current CUDA) random streams, restored on exit."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else [])
