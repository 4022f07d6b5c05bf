"""ArviZ diagnostics for variational fits: a DataTree from a model/guide pair, and VI k-hat.

``to_datatree`` draws ``num_samples`` guide traces per fitted guide (one chain per guide when
``restarts`` is given) and builds ArviZ 1.x groups with dims named after the Pyro plates:
``posterior`` (latent sites), ``posterior_predictive`` (observed sites re-sampled),
``observed_data``, ``log_likelihood`` (pointwise, unscaled), ``sample_stats`` (``log_weight =
log p(x, z) - log q(z)`` per draw) and, when histories are passed, ``vi_history``. Draws are
taken one trace at a time, so every site has the shape ``(chain, draw, *site shape)`` and no
particle dimension wanders.

``vi_khat`` is the Pareto k-hat of the importance ratios ``p(x, z) / q(z)`` (Yao et al. 2018,
"Yes, but did it work?"): below 0.5 the guide is good for importance sampling, 0.5-0.7 usable,
above 0.7 unreliable. ArviZ is imported inside the functions, so ``import pyro_reparam`` stays
fast.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyro.poutine as poutine
import torch
from pyro.poutine.subsample_messenger import _Subsample

from pyro_reparam.diagnostics.khat import log_weight, pareto_khat, replayed_traces


def _site_dims(name, site, value_shape, dims):
    if dims and name in dims:
        return list(dims[name])
    batch = len(site["fn"].batch_shape)
    out = [f"{name}_dim_{i}" for i in range(len(value_shape))]
    for frame in site["cond_indep_stack"]:
        if frame.vectorized and batch + frame.dim >= 0:
            out[batch + frame.dim] = frame.name
    return out


def to_datatree(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 1000,
    restarts: Sequence[Callable] | None = None,
    var_names: Sequence[str] | None = None,
    dims: Mapping[str, Sequence[str]] | None = None,
    coords: Mapping[str, Any] | None = None,
    histories: Sequence[Any] | None = None,
    **kwargs,
):
    """An ArviZ 1.x ``DataTree`` of the fitted ``guide`` (or of each guide in ``restarts``, one
    chain each) for ``model(*args, **kwargs)``. ``dims`` overrides the plate-derived dims of a
    site; ``histories`` (:class:`~pyro_reparam.train.History`, one per chain) adds the ELBO
    curves as group ``vi_history``."""
    import arviz as az

    guides = list(restarts) if restarts else [guide]
    if num_samples < 1:
        raise ValueError(f"to_datatree: num_samples must be >= 1, got {num_samples}")
    groups = {k: {} for k in ("posterior", "posterior_predictive", "log_likelihood")}
    observed, chain_weights, site_dims = {}, [], {}
    uncond = poutine.uncondition(model)
    for g in guides:
        chain = {k: {} for k in groups}
        weights = []
        with torch.no_grad():
            for _ in range(num_samples):
                guide_tr, model_tr = replayed_traces(model, g, args, kwargs)
                pred_tr = poutine.trace(poutine.replay(uncond, trace=guide_tr)).get_trace(
                    *args, **kwargs
                )
                weights.append(log_weight(model_tr, None) - log_weight(guide_tr, None))
                for name, site in model_tr.nodes.items():
                    if site["type"] != "sample" or isinstance(site["fn"], _Subsample):
                        continue
                    if site["is_observed"]:
                        observed[name] = site["value"]
                        site_dims[name] = _site_dims(name, site, site["value"].shape, dims)
                        lp = site["fn"].log_prob(site["value"])
                        chain["log_likelihood"].setdefault(name, []).append(lp)
                        chain["posterior_predictive"].setdefault(name, []).append(
                            pred_tr.nodes[name]["value"]
                        )
                    elif name in guide_tr.nodes and (var_names is None or name in var_names):
                        site_dims[name] = _site_dims(name, site, site["value"].shape, dims)
                        chain["posterior"].setdefault(name, []).append(site["value"])
        for group, sites in chain.items():
            for name, values in sites.items():
                groups[group].setdefault(name, []).append(torch.stack(values))
        chain_weights.append(torch.stack(weights))
    data = {
        group: {name: _np(torch.stack(chains)) for name, chains in sites.items()}
        for group, sites in groups.items()
        if sites
    }
    data["observed_data"] = {name: _np(v) for name, v in observed.items()}
    data["sample_stats"] = {"log_weight": _np(torch.stack(chain_weights))}
    const, const_dims = _constant_data(model, args, kwargs, observed, site_dims)
    if const:
        data["constant_data"] = const
        site_dims |= const_dims
    dt = az.from_dict(data, dims=site_dims, coords=dict(coords or {}))
    if histories:
        _add_history(dt, histories)
    k = [pareto_khat(w) for w in chain_weights]
    dt.attrs["vi_khat"] = k if len(k) > 1 else k[0]
    return dt


def _constant_data(model, args, kwargs, observed, site_dims):
    """The model's tensor arguments that are not observed data, named as in its signature
    (``arg0``... where it has none), with a leading dim named after the plate of an observed
    site of that size."""
    try:
        names = list(inspect.signature(model).bind_partial(*args).arguments)
    except (TypeError, ValueError):
        names = []
    names += [f"arg{i}" for i in range(len(names), len(args))]
    plate_of_size = {}
    for name, value in observed.items():
        for dim, size in zip(site_dims[name], value.shape, strict=False):
            plate_of_size.setdefault(size, dim)
    const, dims = {}, {}
    for name, value in [*zip(names, args, strict=True), *kwargs.items()]:
        if not isinstance(value, torch.Tensor) or any(value is o for o in observed.values()):
            continue
        const[name] = _np(value)
        dims[name] = [f"{name}_dim_{i}" for i in range(value.dim())]
        if value.dim() and value.shape[0] in plate_of_size:
            dims[name][0] = plate_of_size[value.shape[0]]
    return const, dims


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _add_history(dt, histories):
    import xarray as xr

    epochs = max(len(h.records) for h in histories)
    elbo = np.full((len(histories), epochs), np.nan)
    for c, h in enumerate(histories):
        elbo[c, : len(h.records)] = h.train_elbo
    ds = xr.Dataset({"train_elbo": (("chain", "epoch"), elbo)},
                    coords={"epoch": np.arange(1, epochs + 1)})  # fmt: skip
    dt["vi_history"] = xr.DataTree(ds)
