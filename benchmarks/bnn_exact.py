"""How far is variational inference from the exact posterior on the diabetes data?

The splits of ``benchmarks/bnn_uci.py`` (10 random 90/10, one hidden layer of 50, inputs and
targets standardized by training statistics, metrics in original units), four fits each:

* the plugin's default ``BayesianMLP`` (mean-field, local reparameterization, fan-in prior, the
  noise as a second output), as in ``bnn_uci``;
* the same with ``prior="nngp"`` (scales and noise by the infinite-width marginal likelihood);
* the exact posterior under ``prior="nngp"`` by ``fit_hmc`` (homoscedastic noise at the
  type-II value; 16 chains, 300 warm-up and 300 kept iterations of 32 leapfrog steps);
* ``sklearn.linear_model.BayesianRidge``.

Reported: test RMSE, NLL per point and 90% coverage (mean and s.e. over splits), NLL
differences paired by split, HMC's acceptance and the R-hat of its network outputs.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import torch
from sklearn.datasets import load_diabetes

from benchmarks.bnn_uci import (
    EPOCHS,
    HIDDEN,
    SPLITS,
    network_scores,
    plugin_scores,
    ridge_scores,
    train_test,
)
from benchmarks.report import write
from pyro_reparam.models import BayesianMLP
from pyro_reparam.tables import format_table

HMC_ITERATIONS = 300


def _hmc_scores(xtr, ytr, xte, yte, seed, iterations):
    bnn = BayesianMLP(xtr.shape[1], 1, (HIDDEN,), prior="nngp", noise="homoscedastic")
    result = bnn.fit_hmc(xtr, ytr, num_samples=iterations, warmup=iterations, seed=seed)
    rhat = bnn.hmc_rhat(xtr)
    return network_scores(bnn, xte, yte, 400), {"accept_rate": result.accept_rate.mean().item(),
                                "rhat_median": rhat.median().item(),
                                "rhat_max": rhat.max().item()}  # fmt: skip


def _mean_se(values):
    return statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values))


def run(out: Path, quick: bool = False, log=print) -> dict:
    torch.set_num_threads(1)
    x, y = load_diabetes(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    splits, epochs, iterations = (2, 20, 20) if quick else (SPLITS, EPOCHS, HMC_ITERATIONS)
    names = ("VI default (fan-in prior)", "VI, nngp prior", "HMC, nngp prior", "BayesianRidge")
    scores, hmc_stats, seconds = {n: [] for n in names}, [], {n: [] for n in names}
    for split in range(splits):
        tr, te = train_test(len(x), split)
        data = (x[tr], y[tr], x[te], y[te])
        for name in names:
            t = time.perf_counter()
            if name == "HMC, nngp prior":
                result, stats = _hmc_scores(*data, split, iterations)
                hmc_stats.append(stats)
            elif name == "BayesianRidge":
                result = ridge_scores(*data)
            else:
                prior = "nngp" if "nngp" in name else "fan_in"
                result = plugin_scores(*data, split, epochs, prior=prior)
            seconds[name].append(time.perf_counter() - t)
            scores[name].append(result)
            log(f"split {split} {name:<26} rmse {result[0]:6.2f} nll {result[1]:6.3f} "
                f"cov {result[2]:.2f} ({seconds[name][-1]:.0f} s)")  # fmt: skip
    table, rows = {}, []
    for name, vals in scores.items():
        stats = [_mean_se(list(c)) for c in zip(*vals, strict=True)]
        table[name] = dict(zip(("rmse", "nll", "coverage90"), stats, strict=True))
        table[name]["seconds"] = statistics.mean(seconds[name])
        rows.append([name, *(f"{m:.3f} ± {s:.3f}" for m, s in stats),
                     f"{table[name]['seconds']:.1f}"])  # fmt: skip
    text = format_table(["model", "test RMSE", "test NLL", "90% coverage", "s per fit"], rows)
    nll = {n: [v[1] for v in vals] for n, vals in scores.items()}
    pairs = {}
    for a, b in (("HMC, nngp prior", "VI default (fan-in prior)"),
                 ("HMC, nngp prior", "BayesianRidge"),
                 ("VI default (fan-in prior)", "BayesianRidge"),
                 ("VI, nngp prior", "VI default (fan-in prior)")):  # fmt: skip
        pairs[f"{a} - {b}"] = _mean_se([p - q for p, q in zip(nll[a], nll[b], strict=True)])
    paired = "\n".join(f"{k}: {m:+.3f} ± {s:.3f}" for k, (m, s) in pairs.items())
    accept = statistics.mean(s["accept_rate"] for s in hmc_stats)
    rhat_med = statistics.median(s["rhat_median"] for s in hmc_stats)
    rhat_max = max(s["rhat_max"] for s in hmc_stats)
    hmc_line = (
        f"HMC: acceptance {accept:.2f}, R-hat of the outputs at the training inputs: median "
        f"over splits of the median {rhat_med:.3f}, worst {rhat_max:.3f}"
    )
    log(f"{text}\n\ntest NLL differences, paired by split:\n{paired}\n{hmc_line}")
    summary = {"splits": splits, "epochs": epochs, "hmc_iterations": iterations,
               "quick": quick, "results": table, "per_split": scores, "paired_nll": pairs,
               "hmc": hmc_stats}  # fmt: skip
    write(
        out,
        "bnn_exact",
        summary,
        f"Variational against exact (HMC) posteriors, diabetes, {splits} splits",
        f"```\n{text}\n```\n\nTest NLL differences, paired by split:\n\n```\n{paired}\n```\n\n"
        f"{hmc_line}\n",
    )
    return summary
