"""In-between uncertainty on the toy with a gap: what the prior allows and what mean-field VI gets.

Data: ``toy_gap()`` (160 points on [-3, -1] and [1, 3], noise 0.15). Measured: the predictive
standard deviation inside the gap (|x| <= 0.5) over the one near the data (1.5 <= |x| <= 2.5),
and the RMSE of the predictive mean against the true function on the data's range.

* **Exact posterior** of the infinite-width limit of ``BayesianMLP``'s prior (one hidden ReLU
  layer, fan-in scaled weights, N(0, 1) biases: a Gaussian process with the arc-cosine kernel),
  noise fixed at its true value, for output-layer prior scales ``OUT_SCALES`` times the fan-in
  scale, with the log marginal likelihood of each.
* **Mean-field VI**: ``BayesianMLP(1, 1, (50,))`` fitted by its default ELBO with the same
  output-layer prior scales.

The first shows whether the prior admits in-between uncertainty at all; the second whether the
mean-field family can represent it (Foong et al. 2019 prove a bound for one hidden layer).
"""

from __future__ import annotations

import math
from pathlib import Path

import pyro
import torch
from pyro_reparam.models import BayesianMLP

from benchmarks.report import write
from pyro_reparam.bnn_job import toy_gap
from pyro_reparam.text import format_table

OUT_SCALES = (1.0, 3.0, 10.0)
NOISE = 0.15
GRID = torch.linspace(-3, 3, 121)


class _ScaledOutput(BayesianMLP):
    """``BayesianMLP`` whose output layer's prior scale is ``out_scale`` x the fan-in scale."""

    def __init__(self, *args, out_scale: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.out_scale = out_scale

    def _prior_scale(self, fan_in: int) -> float:
        scale = 1.0 / math.sqrt(fan_in)
        return scale * self.out_scale if fan_in == self.sizes[-2] else scale


def _relu_kernel(a: torch.Tensor, b: torch.Tensor, out_scale: float) -> torch.Tensor:
    """``k(a, b) = 1 + out_scale^2 E[relu(u_a) relu(u_b)]``, ``u_x = w x + c``, w, c ~ N(0, 1)
    (Cho & Saul's arc-cosine kernel of order 1, plus the output bias)."""
    k11, k22 = 1 + a[:, None] ** 2, 1 + b[None, :] ** 2
    k12 = 1 + a[:, None] * b[None, :]
    theta = torch.acos((k12 / (k11 * k22).sqrt()).clamp(-1, 1))
    relu = (k11 * k22).sqrt() / (2 * math.pi) * (theta.sin() + (math.pi - theta) * theta.cos())
    return 1 + out_scale**2 * relu


def _ratio_and_rmse(mean: torch.Tensor, std: torch.Tensor) -> tuple[float, float]:
    gap = std[GRID.abs() <= 0.5].mean()
    near = std[(GRID.abs() >= 1.5) & (GRID.abs() <= 2.5)].mean()
    on_data = GRID.abs() >= 1
    truth = torch.sin(2 * GRID) + GRID / 2
    rmse = (mean[on_data] - truth[on_data]).pow(2).mean().sqrt()
    return float(gap / near), float(rmse)


def _exact(x, y, out_scale):
    x, y = x[:, 0].double(), y.double()
    xm, xs, ym, ys = x.mean(), x.std(), y.mean(), y.std()
    a, t, g = (x - xm) / xs, (y - ym) / ys, (GRID.double() - xm) / xs
    n2 = (NOISE / ys) ** 2
    chol = torch.linalg.cholesky(_relu_kernel(a, a, out_scale) + n2 * torch.eye(len(a)))
    ks = _relu_kernel(g, a, out_scale)
    alpha = torch.cholesky_solve(t[:, None], chol)[:, 0]
    var = _relu_kernel(g, g, out_scale).diag() - (ks * torch.cholesky_solve(ks.T, chol).T).sum(1)
    log_ml = -0.5 * t @ alpha - chol.diag().log().sum() - len(t) / 2 * math.log(2 * math.pi)
    mean, std = (ks @ alpha) * ys + ym, (var + n2).sqrt() * ys
    return (*_ratio_and_rmse(mean.float(), std.float()), float(log_ml))


def _mean_field(x, y, out_scale, epochs):
    pyro.clear_param_store()
    torch.manual_seed(0)
    bnn = _ScaledOutput(1, 1, (50,), out_scale=out_scale)
    bnn.fit(x, y, epochs=epochs, batch_size=128, lr=0.01)
    p = bnn.predict(GRID[:, None], num_samples=500)
    return _ratio_and_rmse(p["mean"], p["std"])


def run(out: Path, quick: bool = False, log=print) -> dict:
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    x, y = toy_gap()
    epochs = 20 if quick else 2000
    results, rows = {}, []
    for c in OUT_SCALES:
        ratio, rmse, log_ml = _exact(x, y, c)
        vi_ratio, vi_rmse = _mean_field(x, y, c, epochs)
        results[str(c)] = {"exact": {"gap_over_near": ratio, "rmse": rmse, "log_ml": log_ml},
                           "mean_field": {"gap_over_near": vi_ratio, "rmse": vi_rmse}}  # fmt: skip
        rows.append([f"{c:g}", f"{log_ml:.1f}", f"{ratio:.2f}", f"{rmse:.3f}", f"{vi_ratio:.2f}",
                     f"{vi_rmse:.3f}"])  # fmt: skip
    text = format_table(["output prior x fan-in", "exact log ML", "exact gap/near", "exact RMSE",
                         "mean-field gap/near", "mean-field RMSE"], rows)  # fmt: skip
    log(text)
    summary = {"epochs": epochs, "quick": quick, "results": results}
    write(
        out,
        "bnn_gap",
        summary,
        f"In-between uncertainty, gap toy: exact posterior vs mean-field VI ({epochs} epochs)",
        f"```\n{text}\n```\n",
    )
    return summary
