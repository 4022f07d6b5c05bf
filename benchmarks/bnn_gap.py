"""In-between uncertainty on the toy with a gap: what the prior allows, what mean-field VI and
what HMC get.

Data: ``toy_gap()`` (160 points on [-3, -1] and [1, 3], noise 0.15). Measured: the predictive
standard deviation inside the gap (|x| <= 0.5) over the one near the data (1.5 <= |x| <= 2.5),
and the RMSE of the predictive mean against the true function on the data's range.

Priors (one hidden ReLU layer of 50): the fan-in prior with the output layer's scale
``OUT_SCALES`` times the fan-in scale, and ``prior="nngp"`` (all scales and the noise by the
marginal likelihood of the infinite-width limit). For each:

* **Exact posterior** of the infinite-width limit (a Gaussian process with the arc-cosine
  kernel), with its log marginal likelihood; noise at its true value for the fixed priors.
* **Mean-field VI**: ``BayesianMLP(1, 1, (50,))`` fitted by its default ELBO, 2000 epochs.
* **HMC**: ``BayesianMLP.fit_hmc`` (16 chains, 300 warm-up and 300 kept iterations of 32
  leapfrog steps), homoscedastic noise at its true value (fixed priors) or the fitted one.

The exact column shows whether the prior admits in-between uncertainty at all; the other two
whether an approximation finds it (Foong et al. 2019 prove a bound for mean-field, one hidden
layer).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pyro
import torch

from benchmarks.report import write
from pyro_reparam.apps.bnn_job import toy_gap
from pyro_reparam.models import BayesianMLP
from pyro_reparam.models.bnn.nngp import log_marginal_likelihood, relu_nngp_kernel
from pyro_reparam.tables import format_table

OUT_SCALES = (1.0, 3.0, 10.0)
NOISE = 0.15
GRID = torch.linspace(-3, 3, 121)


class _ScaledOutput(BayesianMLP):
    """``BayesianMLP`` whose output layer's prior scale is ``out_scale`` x the fan-in scale."""

    def __init__(self, *args, out_scale: float, **kwargs):
        self.out_scale = out_scale
        super().__init__(*args, **kwargs)

    def _fixed_prior_scales(self) -> torch.Tensor:
        scales = super()._fixed_prior_scales()
        scales[-1, 0] *= self.out_scale
        return scales


def _ratio_and_rmse(mean: torch.Tensor, std: torch.Tensor) -> tuple[float, float]:
    gap = std[GRID.abs() <= 0.5].mean()
    near = std[(GRID.abs() >= 1.5) & (GRID.abs() <= 2.5)].mean()
    on_data = GRID.abs() >= 1
    truth = torch.sin(2 * GRID) + GRID / 2
    rmse = (mean[on_data] - truth[on_data]).pow(2).mean().sqrt()
    return float(gap / near), float(rmse)


def _exact(x, y, scales: torch.Tensor):
    """GP posterior on the grid; ``scales``: ``(s_w, s_b, s_v, s_c, noise)`` in standardized
    units."""
    x, y = x.double(), y.double()
    xm, xs, ym, ys = x.mean(0), x.std(0), y.mean(), y.std()
    a, t, g = (x - xm) / xs, (y - ym) / ys, (GRID[:, None].double() - xm) / xs
    n2 = scales[4] ** 2
    chol = torch.linalg.cholesky(relu_nngp_kernel(a, a, 1, scales) + n2 * torch.eye(len(a)))
    ks = relu_nngp_kernel(g, a, 1, scales)
    alpha = torch.cholesky_solve(t[:, None], chol)[:, 0]
    prior_var = relu_nngp_kernel(g, g, 1, scales).diag()
    var = prior_var - (ks * torch.cholesky_solve(ks.T, chol).T).sum(1)
    mean, std = (ks @ alpha) * ys + ym, (var + n2).sqrt() * ys
    log_ml = float(log_marginal_likelihood(a, t, 1, scales))
    return (*_ratio_and_rmse(mean.float(), std.float()), log_ml)


def _network(prior, out_scale, noise="heteroscedastic"):
    if prior == "nngp":
        return BayesianMLP(1, 1, (50,), prior="nngp", noise=noise)
    return _ScaledOutput(1, 1, (50,), out_scale=out_scale, noise=noise)


def _mean_field(x, y, prior, out_scale, epochs):
    pyro.clear_param_store()
    torch.manual_seed(0)
    bnn = _network(prior, out_scale)
    bnn.fit(x, y, epochs=epochs, batch_size=128, lr=0.01)
    p = bnn.predict(GRID[:, None], num_samples=500)
    return _ratio_and_rmse(p["mean"], p["std"])


def _hmc(x, y, prior, out_scale, iterations):
    bnn = _network(prior, out_scale, noise="homoscedastic")
    if prior != "nngp":
        with torch.no_grad():
            bnn.log_noise.fill_(math.log(NOISE / y.std().item()))
    t = time.perf_counter()
    result = bnn.fit_hmc(x, y, num_samples=iterations, warmup=iterations)
    seconds = time.perf_counter() - t
    p = bnn.predict(GRID[:, None], num_samples=800)
    ratio, rmse = _ratio_and_rmse(p["mean"], p["std"])
    rhat = bnn.hmc_rhat(x)
    return {"gap_over_near": ratio, "rmse": rmse, "seconds": seconds,
            "accept_rate": result.accept_rate.mean().item(),
            "rhat_median": rhat.median().item(), "rhat_max": rhat.max().item(),
            "prior_scales": None if bnn.prior_fit is None else vars(bnn.prior_fit)}  # fmt: skip


def run(out: Path, quick: bool = False, log=print) -> dict:
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    x, y = toy_gap()
    epochs, iterations = (20, 20) if quick else (2000, 300)
    results, rows = {}, []
    for prior in (*OUT_SCALES, "nngp"):
        out_scale = 1.0 if prior == "nngp" else prior
        hmc = _hmc(x, y, prior, out_scale, iterations)
        if prior == "nngp":
            pf = hmc["prior_scales"]
            scales = [pf[k] for k in ("weight", "bias", "output_weight", "output_bias", "noise")]
            label = "nngp (type-II ML)"
        else:
            scales = [1.0, 1.0, out_scale, 1.0, NOISE / y.std().item()]
            label = f"fan-in, output x{prior:g}"
        ratio, rmse, log_ml = _exact(x, y, torch.tensor(scales, dtype=torch.float64))
        vi_ratio, vi_rmse = _mean_field(x, y, prior, out_scale, epochs)
        results[label] = {"exact": {"gap_over_near": ratio, "rmse": rmse, "log_ml": log_ml},
                          "mean_field": {"gap_over_near": vi_ratio, "rmse": vi_rmse},
                          "hmc": hmc}  # fmt: skip
        rows.append([label, f"{log_ml:.1f}", f"{ratio:.2f}", f"{rmse:.3f}", f"{vi_ratio:.2f}",
                     f"{vi_rmse:.3f}", f"{hmc['gap_over_near']:.2f}", f"{hmc['rmse']:.3f}",
                     f"{hmc['rhat_median']:.2f}", f"{hmc['seconds']:.0f}"])  # fmt: skip
        log(rows[-1])
    text = format_table(["prior", "exact log ML", "exact gap/near", "exact RMSE",
                         "mean-field gap/near", "mean-field RMSE", "HMC gap/near", "HMC RMSE",
                         "HMC R-hat (median)", "HMC s"], rows)  # fmt: skip
    log(text)
    summary = {"epochs": epochs, "hmc_iterations": iterations, "quick": quick, "results": results}
    write(
        out,
        "bnn_gap",
        summary,
        f"In-between uncertainty, gap toy: exact posterior, mean-field VI ({epochs} epochs) and "
        f"HMC (16 chains x {iterations} kept draws)",
        f"```\n{text}\n```\n\nR-hat: of the network's output at the training inputs across the "
        "16 chains.\n",
    )
    return summary
