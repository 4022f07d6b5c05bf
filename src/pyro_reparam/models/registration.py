"""The parameters a ready model's direct ELBO trains, as the param store names them.

A step of ``pyro.infer.SVI`` finds its parameters by tracing the ``pyro.module`` /
``pyro.param`` calls of the model and guide. The ready models' direct ELBOs make the same
calls, so ``SVI`` sees the same parameters. :func:`pyro_reparam.train.fit` does not need the
trace when the ELBO can list them (``step_params``, :func:`pyro_reparam.train.step.direct_params`),
and once the store holds every parameter under its ``pyro.module`` name as the very tensor the
network computes with, those calls change nothing (``pyro.module`` hands back the same tensors and
loads no state), so a step outside any Pyro handler may skip them.
"""

from __future__ import annotations

import pyro
import torch
from pyro.params.param_store import _MODULE_NAMESPACE_DIVIDER
from pyro.poutine.runtime import _PYRO_STACK
from torch import nn

Named = list[tuple[str, torch.Tensor]]


def module_params(name: str, module: nn.Module) -> Named:
    """``(param-store name, tensor)`` of each parameter ``pyro.module(name, module)`` registers."""
    prefix = name + _MODULE_NAMESPACE_DIVIDER
    return [(prefix + n, p) for n, p in module.named_parameters()]


def stored(named: Named) -> Named | None:
    """``named`` in name order, when the param store holds each entry under its name as that
    very tensor; ``None`` otherwise (the first step, a cleared store, a store loaded or assigned
    since, a network whose names an earlier network holds). A frozen module parameter
    (``requires_grad=False``) is left out, as ``pyro.module`` leaves it out of the store and so
    out of ``SVI.step``'s param trace; a frozen ``pyro.param`` tensor stays, as it stays there."""
    listed = [(n, p) for n, p in named if p.requires_grad or _MODULE_NAMESPACE_DIVIDER not in n]
    held = pyro.get_param_store()._params  # name -> tensor (the reverse map keeps stale tensors)
    if any(held.get(n) is not p for n, p in listed):
        return None
    return sorted(listed, key=lambda item: item[0])


def must_register(named: Named) -> bool:
    """Whether a step has to make its ``pyro.module`` / ``pyro.param`` calls: under any Pyro
    handler (``SVI.step`` collects the parameters from them), or while :func:`stored` fails."""
    return bool(_PYRO_STACK) or stored(named) is None
