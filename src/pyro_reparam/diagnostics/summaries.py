"""Posterior summaries read at a glance: per scalar (ArviZ), per site, and which chain
statistics mean something for this fit.

R-hat compares chains and ESS counts effectively independent draws. Both carry their meaning
for several MCMC chains, and R-hat for several VI restarts (do independent fits agree?). One VI
fit is one chain of independent draws from the guide: R-hat is undefined and the ESS is the
number of draws, so both are left out. A DataTree may also say why its chains cannot be
compared through ``dt.attrs["rhat_note"]`` (say, network weights, whose hidden units can swap
between chains): then they are left out with that note.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

CHAIN_COLUMNS = ("ess_bulk", "ess_tail", "r_hat")
SINGLE_VI_FIT = (
    "one VI fit is a single chain of independent draws from the guide: there are no chains to "
    "compare and every draw counts; fit restarts (to_datatree(..., restarts=[...])) to see "
    "whether independent fits agree"
)


@dataclass
class SiteDraws:
    """One posterior site: its draws pooled over chains, ``(chain * draw, scalars)``, and the
    label of each scalar (``"w[0, 3]"``, or the site name for a scalar site)."""

    name: str
    draws: np.ndarray
    labels: list[str]


@dataclass
class PosteriorSummary:
    """``table``: ArviZ's summary per scalar; ``sites``: one row per site (``scalars``, ``mean
    |mean|``, ``mean sd``, ``max sd``, and where chains compare, ``max r_hat``, ``min
    ess_bulk``); ``dropped``: why the chain statistics are left out (empty when kept)."""

    table: Any
    sites: Any
    chains: int
    draws: int
    variational: bool
    dropped: str


def site_draws(dt, var_names: Sequence[str] | None = None) -> list[SiteDraws]:
    """The posterior's sites (``var_names``, default all), chains pooled."""
    out = []
    for name, da in dt.posterior.data_vars.items():
        if var_names is not None and name not in var_names:
            continue
        values = np.asarray(da.values, dtype=float)
        draws = values.reshape(values.shape[0] * values.shape[1], -1)
        inner = da.dims[2:]
        coords = [np.asarray(da[d].values) if d in da.coords else np.arange(n)
                  for d, n in zip(inner, values.shape[2:], strict=True)]  # fmt: skip
        labels = [
            f"{name}[{', '.join(str(c[i]) for c, i in zip(coords, idx, strict=True))}]"
            for idx in np.ndindex(*values.shape[2:])
        ]
        out.append(SiteDraws(name, draws, labels if inner else [name]))
    return out


def is_variational(dt) -> bool:
    """Whether ``dt`` holds guide draws (:func:`to_datatree` writes the importance weights)."""
    return "vi_khat" in dt.attrs or (
        "sample_stats" in dt.children and "log_weight" in dt.sample_stats.data_vars
    )


def dropped_chain_statistics(dt) -> str:
    """Why R-hat and ESS mean nothing for ``dt`` (``""`` when they do)."""
    note = str(dt.attrs.get("rhat_note", ""))
    if note:
        return note
    if is_variational(dt) and int(dt.posterior.sizes["chain"]) == 1:
        return SINGLE_VI_FIT
    return ""


def summarize(dt, var_names: Sequence[str] | None = None) -> PosteriorSummary:
    """The per-scalar and per-site summaries of ``dt.posterior``."""
    import arviz as az
    import pandas as pd

    dropped = dropped_chain_statistics(dt)
    table = az.summary(dt, var_names=var_names)
    if dropped:
        table = table.drop(columns=[c for c in CHAIN_COLUMNS if c in table.columns])
    rows = {}
    for site in site_draws(dt, var_names):
        sd = site.draws.std(0)
        rows[site.name] = {
            "scalars": site.draws.shape[1],
            "mean |mean|": float(np.abs(site.draws.mean(0)).mean()),
            "mean sd": float(sd.mean()),
            "max sd": float(sd.max()),
        }
    sites = pd.DataFrame.from_dict(rows, orient="index")
    if "r_hat" in table.columns and int(dt.posterior.sizes["chain"]) > 1:
        by_site = table[["r_hat", "ess_bulk"]].astype(float).groupby(_site_of(table.index))
        sites["max r_hat"] = by_site["r_hat"].max()
        sites["min ess_bulk"] = by_site["ess_bulk"].min()
    return PosteriorSummary(
        table=table,
        sites=sites,
        chains=int(dt.posterior.sizes["chain"]),
        draws=int(dt.posterior.sizes["draw"]),
        variational=is_variational(dt),
        dropped=dropped,
    )


def _site_of(labels) -> list[str]:
    """The site of each row label of ArviZ's summary (``"w[0, 3]"`` -> ``"w"``)."""
    return [label.split("[", 1)[0] for label in labels]
