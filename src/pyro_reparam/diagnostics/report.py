"""``diagnose``: the summary, LOO and figures of a variational (or MCMC) fit's DataTree, short
enough to read at a glance, with the full tables in files."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pyro_reparam.diagnostics.figure_io import save_figure
from pyro_reparam.diagnostics.figures import MAX_ROWS, khat_figure, posterior_figure, ppc_figure
from pyro_reparam.diagnostics.khat import khat_reading
from pyro_reparam.diagnostics.summaries import PosteriorSummary, summarize
from pyro_reparam.tables import format_table

RHAT_LIMIT = 1.01
LOO_KHAT_LIMIT = 0.7
WORST_SITES = 5


def diagnose(dt, out: str | Path | None = None, var_names: Sequence[str] | None = None) -> dict:
    """Summaries and plots of a :func:`to_datatree` result (or of MCMC draws in a DataTree).

    Returns a dict with ``summary`` (the table to print: ArviZ's per scalar up to ``MAX_ROWS``
    scalars, else one row per site), ``table`` (per scalar) and ``sites`` (per site), ``text``
    (a few lines: sizes, the widest sites, chain agreement, k-hat and LOO), ``vi_khat`` per
    chain with its reading, ``num_chains``, ``loo`` (PSIS-LOO, where there is a
    log-likelihood). R-hat and ESS are kept only where chains can be compared (several MCMC
    chains or VI restarts); ``text`` says why when they are not.

    With ``out``, writes ``summary.txt`` (the text and the full table), ``summary.csv`` (per
    scalar), ``sites.csv``, ``posterior.png`` (forest plot, at most ``MAX_ROWS`` rows),
    ``ppc.png`` (class frequencies for discrete data, densities otherwise), ``khat.png`` and
    the DataTree as ``datatree.nc`` (reopen with ``arviz.from_netcdf``), and lists them in
    ``files``.
    """
    import arviz as az

    post = summarize(dt, var_names)
    k = np.atleast_1d(np.asarray(dt.attrs.get("vi_khat", []), dtype=float))
    report = {
        "summary": post.table if len(post.table) <= MAX_ROWS else post.sites,
        "table": post.table,
        "sites": post.sites,
        "vi_khat": k.tolist(),
        "vi_khat_reading": [khat_reading(v) for v in k],
        "num_chains": post.chains,
    }
    if "log_likelihood" in dt.children:
        with warnings.catch_warnings():  # the text counts the observations with high k-hat
            warnings.filterwarnings("ignore", "Estimated shape parameter of Pareto", UserWarning)
            report["loo"] = az.loo(dt, pointwise=True)
    report["text"] = _text(post, k, report.get("loo"))
    if out is None:
        return report
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.txt").write_text(report["text"] + "\n\n" + post.table.to_string() + "\n")
    post.table.to_csv(out / "summary.csv")
    post.sites.to_csv(out / "sites.csv")
    save_figure(posterior_figure(dt, var_names), out / "posterior.png")
    if "posterior_predictive" in dt.children and "observed_data" in dt.children:
        save_figure(ppc_figure(dt), out / "ppc.png")
    if "loo" in report:
        save_figure(khat_figure(report["loo"].pareto_k, k.tolist()), out / "khat.png")
    tmp = out / "datatree.nc.tmp"  # then rename: the old file may still be open for reading
    dt.to_netcdf(tmp)
    os.replace(tmp, out / "datatree.nc")
    report["files"] = sorted(p.name for p in out.iterdir())
    return report


def _text(post: PosteriorSummary, vi_khat: np.ndarray, loo) -> str:
    """The printed summary: a few lines, the worst first."""
    sites = post.sites
    kind = "VI fit" if post.variational else "MCMC chain"
    runs = f"{post.chains} {kind}{'s' if post.chains > 1 else ''}"
    if post.variational and post.chains > 1:
        runs = f"{post.chains} VI restarts"
    lines = [f"{int(sites['scalars'].sum())} scalars in {len(sites)} sites; {runs} of "
             f"{post.draws} draws each"]  # fmt: skip
    widest = sites.sort_values("mean sd", ascending=False).head(WORST_SITES)
    rows = [[name, int(r["scalars"]), r["mean |mean|"], r["mean sd"], r["max sd"]]
            for name, r in widest.iterrows()]  # fmt: skip
    lines += ["widest sites:", format_table(["site", "scalars", "mean |mean|", "mean sd",
                                             "max sd"], rows, number_format=".3g")]  # fmt: skip
    if post.dropped:
        lines.append(f"R-hat and ESS left out: {post.dropped}")
    elif "r_hat" in post.table.columns:
        lines.append(_rhat_line(post))
    for c, k in enumerate(vi_khat):
        lines.append(f"VI k-hat, chain {c}: {k:.2f} ({khat_reading(k)}; < 0.5 good, > 0.7 the "
                     "guide is a poor importance sampler of the posterior)")  # fmt: skip
    if loo is not None:
        pk = np.asarray(loo.pareto_k, dtype=float)
        bad = int((pk > LOO_KHAT_LIMIT).sum())
        lines.append(f"PSIS-LOO: elpd {float(loo.elpd):.1f} (se {float(loo.se):.1f}); {bad} of "
                     f"{pk.size} observations with k-hat > {LOO_KHAT_LIMIT}")  # fmt: skip
    return "\n".join(lines)


def _rhat_line(post: PosteriorSummary) -> str:
    rhat = post.table["r_hat"].astype(float)
    high = rhat[rhat > RHAT_LIMIT]
    if high.empty:
        return f"R-hat: all {len(rhat)} scalars <= {RHAT_LIMIT} (the chains agree)"
    fix = ("the restarts found different optima (multimodality or label switching)"
           if post.variational else "run longer or more chains")  # fmt: skip
    worst = high.sort_values(ascending=False).head(3)
    named = ", ".join(f"{i} {v:.2f}" for i, v in worst.items())
    return f"R-hat: {len(high)} of {len(rhat)} scalars above {RHAT_LIMIT} (worst {named}): {fix}"
