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

from collections.abc import Callable

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


class Registration:
    """:func:`stored` and :func:`must_register` for one network's ``entries()``, listed once per
    step of :func:`pyro_reparam.train.fit`: its ``step_params`` call (:meth:`step_params`) lists
    them, and the loss evaluation that follows on the same batch (:meth:`must_register`) checks
    the store against that list instead of listing the network's parameters again. Anything
    else (a loss evaluated without a ``step_params`` call before it, as ``SVI`` does) lists
    them."""

    def __init__(self, entries: Callable[[], Named]):
        self.entries = entries
        self._listed: Named | None = None

    def step_params(self) -> Named | None:
        """:func:`stored` of the entries, remembered for the next :meth:`must_register`."""
        self._listed = stored(self.entries())
        return self._listed

    def must_register(self) -> bool:
        """:func:`must_register` of the entries, listed by the step's :meth:`step_params` when
        it came just before."""
        listed, self._listed = self._listed, None
        if _PYRO_STACK or listed is None:
            return must_register(self.entries())
        held = pyro.get_param_store()._params
        return any(held.get(n) is not p for n, p in listed)
