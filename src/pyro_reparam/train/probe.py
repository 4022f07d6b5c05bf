"""What :func:`~pyro_reparam.train.fit` learns from running the model once on its own before
training: whether it scales its batches up to the data set, and whether the data lie in the
support of the likelihoods that observe them; and the run of guide and model that creates the
parameters.

The model runs with its latents drawn from the prior, without validation, gradients or the
caller's random state touched (it is put back). A model that cannot run that way (an improper
prior, say) counts as unscaled and is checked by the first step instead.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import pyro
import pyro.poutine as poutine
import torch
from torch import nn
from torch.distributions import constraints

from pyro_reparam.train.rng import rng_state, set_rng_state


@dataclass(frozen=True)
class Probe:
    full_data: bool
    """Each batch's loss already estimates the whole data set's ELBO: the model scales its
    observed sites by ``N / B`` (``poutine.scale`` or a subsampled plate), as minibatched models
    with global latents do. The per-datum ELBO of an epoch is then the mean batch loss over
    ``N`` (else the summed loss over ``N``), and data-parallel ranks average their gradients
    (else sum them)."""
    violations: tuple[str, ...]
    """One line per observed site whose data lie outside its distribution's support."""


def probe(model, batch: tuple) -> Probe:
    """Run ``model(*batch)`` once (see the module docstring) and read its trace."""
    state = rng_state()
    try:
        with torch.no_grad(), pyro.validation_enabled(False):
            trace = poutine.trace(model).get_trace(*batch)
    except (NotImplementedError, ValueError, RuntimeError, TypeError):
        return Probe(False, ())
    finally:
        set_rng_state(state)
    full = any(
        site["type"] == "sample" and site["is_observed"] and float(site["scale"]) > 1.0 + 1e-6
        for site in trace.nodes.values()
    )
    return Probe(full, tuple(support_violations(trace, observed=True)))


def support_violations(trace, observed: bool) -> list[str]:
    """A line per sample site of ``trace`` (observed ones, or latent ones) whose value lies
    outside the support of its distribution: the site, the values' range and the support."""
    out = []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or bool(site["is_observed"]) != observed:
            continue
        value = site["value"]
        try:
            support = _elementwise(site["fn"].support)
            ok = support.check(value)
        except (NotImplementedError, RuntimeError, TypeError, AttributeError):
            continue  # a plate's subsample site, or a dependent or unusual support
        if bool(ok.all()):
            continue
        bad = value[~ok]
        kind = "data at observed" if observed else "value the guide gave latent"
        out.append(
            f"the {kind} model site {name!r} lie outside the support {support} of "
            f"{_family(site['fn'])}: {bad.numel()} of {value.numel()} values are not in "
            f"it (range [{_fmt(value.min())}, {_fmt(value.max())}], e.g. {_fmt(bad[0])})"
        )
    return out


def _elementwise(support):
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support


def _family(fn) -> str:
    """The distribution's own name, under ``.to_event``/``.expand``/``.mask`` wrappers."""
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return type(fn).__name__


def _fmt(t: torch.Tensor) -> str:
    return f"{float(t):.4g}"


def create_params(model, guide, batch: tuple) -> set[str]:
    """Run guide and model once so every parameter exists; returns their names. Without
    validation: data a likelihood cannot score are diagnosed by the first step. Warns about
    modules that Pyro's store would leave untrained (:func:`stale_module_params`)."""
    with torch.no_grad(), pyro.validation_enabled(False), poutine.trace(param_only=True) as tape:
        guide_tr = poutine.trace(guide).get_trace(*batch)
        poutine.replay(model, trace=guide_tr)(*batch)
    stale = stale_module_params(tape.trace)
    if stale:
        names = ", ".join(repr(n.replace(MODULE_SEP, ".")) for n in stale[:3])
        more = f" and {len(stale) - 3} more" if len(stale) > 3 else ""
        warnings.warn(
            f"fit: {names}{more} were in Pyro's param store before this module registered them "
            "(pyro.module(name, module) hands back the stored tensor of that name, while the "
            "module computes with its own): the optimizer would train tensors the module "
            "ignores. Call pyro.clear_param_store() before building the network, or give it "
            "another name",
            UserWarning,
            stacklevel=3,
        )
    return set(tape.trace.nodes)


MODULE_SEP = "$$$"  # how pyro.module names a module's parameters: "<name>$$$<parameter>"


def stale_module_params(param_trace) -> list[str]:
    """Parameters that ``pyro.module`` registered whose stored tensor is not the module's own
    parameter: an earlier module of the same name left them in the store, and the module (with
    ``update_module_params=False``, Pyro's default) computes with its own tensor, which no
    optimizer step reaches."""
    stale = []
    for name, site in param_trace.nodes.items():
        args = site.get("args", ())
        if MODULE_SEP not in name or len(args) < 2 or not isinstance(args[1], nn.Parameter):
            continue
        if site["value"].unconstrained() is not args[1]:
            stale.append(name)
    return stale
