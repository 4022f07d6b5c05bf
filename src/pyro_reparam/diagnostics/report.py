"""``diagnose``: the ArviZ summary, LOO and figures of a variational (or MCMC) fit's DataTree."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pyro_reparam.diagnostics.khat import khat_reading


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
    from pyro_reparam.plotting import pyplot

    plt = pyplot()
    pc = draw()
    pc.savefig(path) if hasattr(pc, "savefig") else plt.gcf().savefig(path)
    plt.close("all")
