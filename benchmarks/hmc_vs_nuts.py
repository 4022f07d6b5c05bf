"""The batched HMC of ``BayesianMLP.fit_hmc`` against Pyro's NUTS on the same posterior.

Protocol: the gap toy (160 points, ``apps.bnn_job.toy_gap``), ``BayesianMLP(1, 1, (50,),
prior="nngp", noise="homoscedastic")``: 151 weights, the exact posterior under the fitted
prior. Both samplers get the same log joint (``bnn._log_joint``, flat parameter vectors) and
the same MAP starts (500 Adam steps from a prior draw per chain). What is compared is what
predictions average: the network's output at 41 inputs in [-4, 4] (data and gap), by ArviZ's
rank-normalized bulk ESS and R-hat per input (chains x draws), divided by the wall time of
sampling. Plugin: ``CHAINS`` chains batched, fixed 32 leapfrog steps, dual-averaged step size,
diagonal mass matrix. Pyro: ``NUTS(potential_fn=...)`` (no tracing), one chain after another
(``num_chains > 1`` would fork processes on a 2-core machine), default adaptation
(step size, diagonal mass matrix), max tree depth 10. One thread; divergences as each reports.
"""

from __future__ import annotations

import time
from pathlib import Path

import arviz as az
import numpy as np
import pyro
import torch
from pyro.infer import MCMC, NUTS

from benchmarks.report import write
from pyro_reparam.apps.bnn_job import toy_gap
from pyro_reparam.infer.hmc import hmc
from pyro_reparam.models import BayesianMLP
from pyro_reparam.models.bnn.fitting import _map_estimate
from pyro_reparam.tables import format_table

CHAINS, NUTS_CHAINS, GRID = 16, 2, torch.linspace(-4, 4, 41)[:, None]


def _function_draws(bnn: BayesianMLP, samples: torch.Tensor) -> np.ndarray:
    """``(C, S, P)`` flat draws -> the network's mean output on the grid, ``(C, S, 41)``."""
    xs, _ = bnn.transform(GRID)
    with torch.no_grad():
        f = bnn._mean_output(bnn._forward(xs, bnn._unflatten(samples.flatten(0, 1))))
    return f.reshape(*samples.shape[:2], -1).numpy()


def _scores(f: np.ndarray, seconds: float) -> dict:
    ess = np.asarray(az.ess(f, chain_axis=0, draw_axis=1, method="bulk"))
    rhat = np.asarray(az.rhat(f, chain_axis=0, draw_axis=1))
    return {
        "seconds": seconds,
        "ess_min": float(ess.min()),
        "ess_median": float(np.median(ess)),
        "ess_min_per_second": float(ess.min() / seconds),
        "rhat_median": float(np.median(rhat)),
        "rhat_max": float(rhat.max()),
    }


def _setup(seed: int, chains: int):
    pyro.clear_param_store()
    x, y = toy_gap()
    bnn = BayesianMLP(1, 1, (50,), prior="nngp", noise="homoscedastic")
    xs, ys, _ = bnn._prepare(x, y, None)  # standardization and the fitted nngp prior
    log_joint = bnn._log_joint(xs, ys)
    torch.manual_seed(seed)
    starts = _map_estimate(log_joint, bnn._prior_draws(chains, xs.device), 500)
    return bnn, log_joint, starts


def _nuts(log_joint, starts: torch.Tensor, samples: int, warmup: int):
    draws, divergences = [], 0
    for start in starts:
        kernel = NUTS(potential_fn=lambda p: -log_joint(p["theta"][None])[0], max_tree_depth=10)
        mcmc = MCMC(kernel, num_samples=samples, warmup_steps=warmup,
                    initial_params={"theta": start.clone()}, disable_progbar=True)  # fmt: skip
        mcmc.run()
        draws.append(mcmc.get_samples()["theta"])
        divergences += len(mcmc.diagnostics()["divergences"]["chain 0"])
    return torch.stack(draws), divergences


def run(out: Path, quick: bool = False, log=print) -> dict:
    torch.set_num_threads(1)
    samples, warmup = (40, 40) if quick else (300, 300)
    results = {}
    bnn, log_joint, starts = _setup(0, CHAINS)
    t = time.perf_counter()
    with torch.no_grad(), pyro.validation_enabled(False):
        result = hmc(log_joint, starts, num_samples=samples, warmup=warmup, num_steps=32)
    seconds = time.perf_counter() - t
    results[f"plugin HMC ({CHAINS} chains batched)"] = _scores(
        _function_draws(bnn, result.samples), seconds
    ) | {"divergences": int(result.divergences.sum())}
    nuts_samples, nuts_warmup = (20, 20) if quick else (100, 100)
    t = time.perf_counter()
    with pyro.validation_enabled(False):
        draws, divergences = _nuts(log_joint, starts[:NUTS_CHAINS], nuts_samples, nuts_warmup)
    seconds = time.perf_counter() - t
    results[f"Pyro NUTS ({NUTS_CHAINS} chains in turn)"] = _scores(
        _function_draws(bnn, draws), seconds
    ) | {"divergences": divergences}
    for name, r in results.items():
        log(f"  {name}: {r}")
    rows = [
        [name, f"{r['seconds']:.1f}", f"{r['ess_min']:.0f}", f"{r['ess_min_per_second']:.2f}",
         f"{r['rhat_median']:.3f} / {r['rhat_max']:.3f}", r["divergences"]]
        for name, r in results.items()
    ]  # fmt: skip
    header = ["sampler", "s", "min ESS f(x)", "min ESS / s", "R-hat f(x) median / max", "div."]
    text = format_table(header, rows)
    names = list(results)
    ratio = results[names[0]]["ess_min_per_second"] / results[names[1]]["ess_min_per_second"]
    log(text)
    log(f"plugin / NUTS, min ESS per second: {ratio:.2f}")
    summary = {"results": results, "plugin_over_nuts": ratio, "quick": quick,
               "samples": samples, "nuts_samples": nuts_samples}  # fmt: skip
    write(
        out,
        "hmc_vs_nuts",
        summary,
        "BNN gap toy: batched HMC against Pyro's NUTS (function-space ESS per second, 1 thread)",
        f"```\n{text}\n```\n\nplugin / NUTS, min ESS of f(x) per second: {ratio:.2f}\n",
    )
    return summary
