"""The figures of :func:`~pyro_reparam.diagnostics.diagnose`, each a matplotlib ``Figure`` with a
title and labelled axes, sized to read on a screen (save with
:func:`~pyro_reparam.diagnostics.figure_io.save_figure`).

* :func:`posterior_figure`: a forest plot, chains pooled, of median, 50% and 89% equal-tailed
  intervals. Up to ``MAX_ROWS`` scalars: one row each; beyond, one row per site (mean
  ``|mean|`` and mean sd of its scalars) beside the most uncertain scalars (largest sd).
* :func:`ppc_figure`: the posterior predictive check of each observed site: for discrete data
  (whole numbers, at most ``MAX_CLASSES`` values) the observed frequency of each value against
  the predicted one (mean and 90% interval over draws); otherwise observed and predicted
  densities. The x axis is the site's name, with the units of
  ``dt.observed_data[name].attrs["units"]`` when given.
* :func:`khat_figure`: PSIS-LOO Pareto k-hat per observation with the 0.5 and 0.7 readings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pyro_reparam.diagnostics.khat import khat_reading
from pyro_reparam.diagnostics.summaries import SiteDraws, site_draws

MAX_ROWS = 30
MAX_SITES = 10
MAX_CLASSES = 30
MAX_PPC_SITES = 3
PPC_DRAWS = 40
ROW_INCHES = 0.26
QUANTILES = (0.055, 0.25, 0.5, 0.75, 0.945)


def _plt():
    from pyro_reparam.plotting import pyplot

    return pyplot()


def posterior_figure(dt, var_names: Sequence[str] | None = None, max_rows: int = MAX_ROWS):
    """Forest plot of ``dt.posterior``, at most ``max_rows`` rows."""
    sites = site_draws(dt, var_names)
    total = sum(s.draws.shape[1] for s in sites)
    chains = int(dt.posterior.sizes["chain"])
    pooled = f"{chains} chains pooled" if chains > 1 else "1 chain"
    plt = _plt()
    if total <= max_rows:
        fig, ax = plt.subplots(figsize=(7.5, 1.4 + ROW_INCHES * total))
        _forest(ax, sites)
        ax.set_title(f"posterior of {total} scalars ({pooled})")
        return fig
    shown = sorted(sites, key=lambda s: -s.draws.std(0).mean())[:MAX_SITES]
    top = max_rows - len(shown)
    rows = max(len(shown), top)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 1.6 + ROW_INCHES * rows),
                                      gridspec_kw={"width_ratios": [1, 1.3]})  # fmt: skip
    _site_panel(left, shown)
    if len(shown) < len(sites):
        left.set_title(f"the {len(shown)} widest of {len(sites)} sites")
    widest = _most_uncertain(sites, top)
    _forest(right, widest)
    right.set_title(f"the {top} most uncertain of {total} scalars (largest sd)")
    fig.suptitle(f"posterior of {total} scalars in {len(sites)} sites ({pooled}); "
                 "full table in summary.csv")  # fmt: skip
    return fig


def _forest(ax, sites: Sequence[SiteDraws]) -> None:
    labels, q = [], []
    for s in sites:
        labels += s.labels
        q.append(np.quantile(s.draws, QUANTILES, axis=0).T)
    q = np.concatenate(q) if q else np.zeros((0, len(QUANTILES)))
    y = np.arange(len(labels))[::-1]
    ax.hlines(y, q[:, 0], q[:, 4], color="tab:blue", lw=1)
    ax.hlines(y, q[:, 1], q[:, 3], color="tab:blue", lw=3.5)
    ax.plot(q[:, 2], y, "o", color="white", mec="tab:blue", ms=4)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_ylim(-0.7, len(labels) - 0.3)
    ax.set_xlabel("value: median, 50% (thick) and 89% (thin) intervals, chains pooled")
    ax.set_ylabel("scalar")
    ax.grid(axis="x", alpha=0.3)


def _site_panel(ax, sites: Sequence[SiteDraws]) -> None:
    """Per site: mean |posterior mean| and mean posterior sd of its scalars (log scale)."""
    y = np.arange(len(sites))[::-1]
    tiny = 1e-12
    mean_abs = [max(np.abs(s.draws.mean(0)).mean(), tiny) for s in sites]
    mean_sd = [max(s.draws.std(0).mean(), tiny) for s in sites]
    ax.plot(mean_abs, y, "o", color="tab:blue", label="mean |posterior mean|")
    ax.plot(mean_sd, y, "s", color="tab:orange", label="mean posterior sd")
    ax.set_xscale("log")
    ax.set_yticks(y, [f"{s.name} ({s.draws.shape[1]})" for s in sites], fontsize=8)
    ax.set_ylim(-0.7, len(sites) - 0.3)
    ax.set_xlabel("magnitude (log scale)")
    ax.set_ylabel("site (scalars)")
    ax.set_title("per site")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def _most_uncertain(sites: Sequence[SiteDraws], count: int) -> list[SiteDraws]:
    """The ``count`` scalars of largest sd, as one-scalar sites, largest first."""
    every = [(sd, s, j) for s in sites for j, sd in enumerate(s.draws.std(0))]
    every.sort(key=lambda t: -t[0])
    return [SiteDraws(s.name, s.draws[:, j : j + 1], [s.labels[j]]) for _, s, j in every[:count]]


def axis_label(dt, name: str) -> str:
    """``name (units)`` with the units of the observed site when ``dt`` gives them."""
    units = ""
    for group in ("observed_data", "posterior_predictive"):
        if group in dt.children and name in dt[group].data_vars:
            units = units or str(dt[group][name].attrs.get("units", ""))
    return f"{name} ({units})" if units else name


def is_discrete(values: np.ndarray) -> bool:
    """Whole numbers taking at most ``MAX_CLASSES`` distinct values."""
    return bool(np.all(values == np.round(values))) and np.unique(values).size <= MAX_CLASSES


def ppc_figure(dt):
    """Posterior predictive check of each observed site (at most ``MAX_PPC_SITES``)."""
    names = [n for n in dt.posterior_predictive.data_vars if n in dt.observed_data.data_vars]
    names = names[:MAX_PPC_SITES]
    plt = _plt()
    fig, axes = plt.subplots(1, len(names), figsize=(5.6 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        obs = np.asarray(dt.observed_data[name].values, dtype=float).ravel()
        pred = np.asarray(dt.posterior_predictive[name].values, dtype=float)
        pred = pred.reshape(pred.shape[0] * pred.shape[1], -1)
        pick = np.linspace(0, len(pred) - 1, min(len(pred), 400)).astype(int)
        pred = pred[pick]
        if is_discrete(np.concatenate([obs, pred.ravel()])):
            _class_frequencies(ax, obs, pred)
            ax.set_title(f"posterior predictive check of {name}: value frequencies")
        else:
            _densities(ax, obs, pred)
            ax.set_title(f"posterior predictive check of {name}: densities")
        ax.set_xlabel(axis_label(dt, name))
    return fig


def _class_frequencies(ax, obs: np.ndarray, pred: np.ndarray) -> None:
    classes = np.unique(np.concatenate([obs, pred.ravel()]))
    observed = (obs[:, None] == classes).mean(0)
    per_draw = (pred[:, :, None] == classes).mean(1)
    mean = per_draw.mean(0)
    lo, hi = np.quantile(per_draw, [0.05, 0.95], axis=0)
    ax.bar(classes, observed, width=0.7, color="0.75", label="observed")
    ax.errorbar(classes, mean, yerr=[mean - lo, hi - mean], fmt="o", color="tab:blue", ms=4,
                capsize=3, label="predicted (mean, 90% over draws)")  # fmt: skip
    ax.set_xticks(classes, [f"{c:g}" for c in classes], fontsize=8)
    ax.set_ylabel("fraction of observations")
    ax.legend(fontsize=8)


def _densities(ax, obs: np.ndarray, pred: np.ndarray) -> None:
    lo, hi = np.quantile(np.concatenate([obs, pred.ravel()]), [0.005, 0.995])
    bins = int(np.clip(np.sqrt(obs.size), 10, 40))
    edges = np.linspace(lo, hi, bins + 1) if hi > lo else np.linspace(lo - 1, hi + 1, bins + 1)
    mids = (edges[:-1] + edges[1:]) / 2
    pick = np.linspace(0, len(pred) - 1, min(len(pred), PPC_DRAWS)).astype(int)
    for i, row in enumerate(pred[pick]):
        density, _ = np.histogram(row, edges, density=True)
        ax.plot(mids, density, color="tab:blue", alpha=0.15, lw=0.8,
                label="predicted (one draw each)" if i == 0 else None)  # fmt: skip
    density, _ = np.histogram(obs, edges, density=True)
    ax.plot(mids, density, color="k", lw=2, label="observed")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)


def khat_figure(pareto_k: Any, vi_khat: Sequence[float] = ()):
    """PSIS-LOO k-hat per observation (``pareto_k``: ArviZ's ``loo(...).pareto_k``), the 0.5
    and 0.7 readings, and the VI k-hat of each chain in the corner."""
    k = np.asarray(pareto_k, dtype=float).ravel()
    dim = pareto_k.dims[0] if getattr(pareto_k, "dims", ()) else "observation"
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    colour = np.where(k > 0.7, "tab:red", np.where(k > 0.5, "tab:orange", "tab:blue"))
    ax.scatter(np.arange(k.size), k, s=10, c=colour)
    for level, text in ((0.5, "0.5: good below"), (0.7, "0.7: unreliable above")):
        ax.axhline(level, color="k", ls="--", lw=0.8)
        ax.text(k.size - 1, level, text, fontsize=8, ha="right", va="bottom")
    if len(vi_khat):
        vi = ", ".join(f"{v:.2f} ({khat_reading(v)})" for v in vi_khat[:4])
        more = f" and {len(vi_khat) - 4} more" if len(vi_khat) > 4 else ""
        ax.text(0.01, 0.97, f"VI k-hat of the guide: {vi}{more}", transform=ax.transAxes,
                fontsize=8, va="top")  # fmt: skip
    finite = k[np.isfinite(k)]
    ax.set_ylim(min(-0.1, finite.min(initial=0) - 0.05), max(1.0, finite.max(initial=0) + 0.1))
    ax.set_xlabel(f"observation (index along '{dim}')")
    ax.set_ylabel("Pareto k-hat")
    bad = int((k > 0.7).sum())
    ax.set_title(f"PSIS-LOO k-hat: {bad} of {k.size} observations above 0.7")
    return fig
