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

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyro.poutine as poutine
import torch

MIN_PARTICLES = 50
KHAT_READING = ((0.5, "good"), (0.7, "usable"), (math.inf, "unreliable"))


def _traces(model, guide, args, kwargs):
    guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
    model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args, **kwargs)
    return guide_tr, model_tr


def vi_log_weights(
    model: Callable, guide: Callable, *args, num_particles: int = 1000, plate: str | None = None,
    **kwargs,
) -> torch.Tensor:  # fmt: skip
    """``log p(x, z_s) - log q(z_s)`` for ``z_s ~ q``, shape ``(S,)``; with ``plate`` (an
    amortized guide, local latents), one weight per datum, shape ``(S, N)``: the terms inside
    that plate stay per datum and terms outside it are left out."""
    rows = []
    with torch.no_grad():
        for _ in range(num_particles):
            guide_tr, model_tr = _traces(model, guide, args, kwargs)
            rows.append(_log_weight(model_tr, plate) - _log_weight(guide_tr, plate))
    return torch.stack(rows)


def _log_weight(trace, plate):
    trace.compute_log_prob()
    total = 0.0
    for site in trace.nodes.values():
        if site["type"] != "sample":
            continue
        lp = site["log_prob"]
        if plate is None:
            total = total + lp.sum()
            continue
        frames = [f for f in site["cond_indep_stack"] if f.name == plate]
        if not frames:
            continue
        dim = frames[0].dim
        lp = lp.reshape((1,) * max(0, -dim - lp.dim()) + lp.shape)
        total = total + lp.movedim(dim, -1).reshape(-1, lp.shape[dim]).sum(0)
    return torch.as_tensor(total)


def pareto_khat(log_weights: torch.Tensor | np.ndarray) -> float | np.ndarray:
    """PSIS k-hat of importance ratios ``exp(log_weights)`` along axis 0 (ArviZ's PSIS, which
    smooths ``exp(-input)``: the log-weights are negated). Weights equal up to rounding (q = p up
    to a constant) give ``-inf``."""
    from arviz_stats.base import array_stats

    lw = torch.as_tensor(log_weights, dtype=torch.float64).numpy()
    if lw.shape[0] < MIN_PARTICLES:
        raise ValueError(
            f"pareto_khat: {lw.shape[0]} draws leave too short a tail to fit; use at least "
            f"{MIN_PARTICLES} (a few hundred for a stable estimate)"
        )
    lw = np.moveaxis(lw, 0, -1)
    spread = lw.max(-1) - lw.min(-1)
    khat = np.full(lw.shape[:-1], -np.inf)
    ok = spread > 1e-4 * np.maximum(1.0, np.abs(lw).max(-1))  # beyond float32 rounding
    if ok.any():
        _, k = array_stats.psislw(-lw[ok], r_eff=1, axis=-1)
        khat[ok] = k
    return float(khat) if khat.ndim == 0 else khat


def vi_khat(
    model: Callable, guide: Callable, *args, num_particles: int = 1000, plate: str | None = None,
    **kwargs,
) -> float | np.ndarray:  # fmt: skip
    """Pareto k-hat of ``p(x, z) / q(z)``; one per datum with ``plate`` (amortized guides)."""
    lw = vi_log_weights(model, guide, *args, num_particles=num_particles, plate=plate, **kwargs)
    return pareto_khat(lw)


def khat_reading(k: float) -> str:
    """``"good"`` (< 0.5), ``"usable"`` (0.5-0.7) or ``"unreliable"`` (> 0.7)."""
    return next(label for bound, label in KHAT_READING if k < bound)


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
    observed, log_weight, site_dims = {}, [], {}
    uncond = poutine.uncondition(model)
    for g in guides:
        chain = {k: {} for k in groups}
        weights = []
        with torch.no_grad():
            for _ in range(num_samples):
                guide_tr, model_tr = _traces(model, g, args, kwargs)
                pred_tr = poutine.trace(poutine.replay(uncond, trace=guide_tr)).get_trace(
                    *args, **kwargs
                )
                weights.append(_log_weight(model_tr, None) - _log_weight(guide_tr, None))
                for name, site in model_tr.nodes.items():
                    if site["type"] != "sample" or name.startswith("_"):
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
        log_weight.append(torch.stack(weights))
    data = {
        group: {name: _np(torch.stack(chains)) for name, chains in sites.items()}
        for group, sites in groups.items()
        if sites
    }
    data["observed_data"] = {name: _np(v) for name, v in observed.items()}
    data["sample_stats"] = {"log_weight": _np(torch.stack(log_weight))}
    const = {k: _np(v) for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
    const |= {
        f"arg{i}": _np(a)
        for i, a in enumerate(args)
        if isinstance(a, torch.Tensor) and not any(a is o for o in observed.values())
    }
    if const:
        data["constant_data"] = const
    dt = az.from_dict(data, dims=site_dims, coords=dict(coords or {}))
    if histories:
        _add_history(dt, histories)
    k = [pareto_khat(w) for w in log_weight]
    dt.attrs["vi_khat"] = k if len(k) > 1 else k[0]
    return dt


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


def diagnose(dt, out: str | Path | None = None, var_names: Sequence[str] | None = None) -> dict:
    """Summaries and plots of a :func:`to_datatree` result.

    Returns (and, with ``out``, writes into it) the ArviZ summary (``summary.txt``,
    ``summary.csv``: mean, sd, intervals, and R-hat and ESS across chains, i.e. whether
    independent SVI restarts agree), VI k-hat per chain with its reading, PSIS-LOO where there
    is a log-likelihood, the plots ``posterior.png`` (distributions, or a forest plot beyond 12
    scalars), ``ppc.png`` and ``khat.png``, and the
    DataTree as ``datatree.nc`` (reopen with ``arviz.from_netcdf``).
    """
    import arviz as az

    summary = az.summary(dt, var_names=var_names)
    k = np.atleast_1d(np.asarray(dt.attrs.get("vi_khat", []), dtype=float))
    report = {
        "summary": summary,
        "vi_khat": k.tolist(),
        "vi_khat_reading": [khat_reading(v) for v in k],
        "num_chains": int(dt.posterior.sizes["chain"]),
    }
    if "log_likelihood" in dt.children:
        report["loo"] = az.loo(dt, pointwise=True)
    if out is None:
        return report
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.txt").write_text(summary.to_string())
    summary.to_csv(out / "summary.csv")
    size = sum(int(np.prod(v.shape[2:])) for v in dt.posterior.data_vars.values())
    if size <= 12:
        _plot(lambda: az.plot_dist(dt, var_names=var_names), out / "posterior.png")
    else:  # many scalars: one row each
        _plot(lambda: az.plot_forest(dt, var_names=var_names), out / "posterior.png")
    if "posterior_predictive" in dt.children:
        _plot(lambda: az.plot_ppc_dist(dt), out / "ppc.png")
    if "loo" in report:
        _plot(lambda: az.plot_khat(report["loo"]), out / "khat.png")
    tmp = out / "datatree.nc.tmp"  # then rename: the old file may still be open for reading
    dt.to_netcdf(tmp)
    os.replace(tmp, out / "datatree.nc")
    report["files"] = sorted(p.name for p in out.iterdir())
    return report


def _plot(draw, path: Path) -> None:
    from pyro_reparam.plots import pyplot

    plt = pyplot()
    pc = draw()
    pc.savefig(path) if hasattr(pc, "savefig") else plt.gcf().savefig(path)
    plt.close("all")
