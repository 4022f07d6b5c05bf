"""Bayesian neural networks on the diabetes data: 10 random 90/10 splits, one hidden layer of 50.

Compared, on the same splits and with inputs and targets standardized by training statistics
(metrics in original units):

* the plugin's default ``BayesianMLP`` (local reparameterization, fan-in priors, the noise
  learned as a second output, closed-form KL), ``EPOCHS`` epochs, batch 128, ClippedAdam(0.01);
* Pyro out of the box: a ``PyroModule`` MLP with ``PyroSample`` N(0, 1) priors,
  ``sigma ~ Uniform(0, 10)`` as in Pyro's regression tutorial, ``AutoNormal``, ``Trace_ELBO``,
  the same epochs, batches and optimizer;
* ``sklearn.linear_model.BayesianRidge``.

Reported: test RMSE, test NLL per point (``-log p(y | x, data)``), 90% interval coverage; mean
and standard error over the splits, and the plugin's NLL minus BayesianRidge's paired by split.
The plugin's defaults were chosen on validation data carved out of the training parts, never on
a test part (``benchmarks/bnn_defaults.py``).
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroSample
from sklearn.datasets import load_diabetes
from sklearn.linear_model import BayesianRidge
from torch import nn

import pyro_reparam as pr
from benchmarks.report import write
from pyro_reparam.models import BayesianMLP, interval_coverage
from pyro_reparam.tables import format_table

SPLITS, EPOCHS, BATCH, LR, HIDDEN = 10, 500, 128, 0.01, 50
Z90 = 1.6448536269514722


class PyroMLP(PyroModule):
    """The Bayesian MLP as Pyro's tutorials write it."""

    def __init__(self, d):
        super().__init__()
        self.fc1 = PyroModule[nn.Linear](d, HIDDEN)
        self.fc1.weight = PyroSample(dist.Normal(0.0, 1.0).expand([HIDDEN, d]).to_event(2))
        self.fc1.bias = PyroSample(dist.Normal(0.0, 1.0).expand([HIDDEN]).to_event(1))
        self.fc2 = PyroModule[nn.Linear](HIDDEN, 1)
        self.fc2.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, HIDDEN]).to_event(2))
        self.fc2.bias = PyroSample(dist.Normal(0.0, 1.0).expand([1]).to_event(1))

    def forward(self, x, y=None, num_data=None):
        mean = pyro.deterministic("f", self.fc2(torch.relu(self.fc1(x))).squeeze(-1))
        sigma = pyro.sample("sigma", dist.Uniform(0.0, 10.0))
        scale = 1.0 if num_data is None else num_data / x.shape[0]
        with pyro.plate("data", x.shape[0]), pyro.poutine.scale(scale=scale):
            return pyro.sample("obs", dist.Normal(mean, sigma), obs=y)


def train_test(n: int, split: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the training and test part of random 90/10 split number ``split``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(100 + split))
    return perm[n // 10 :], perm[: n // 10]


def _pyro_baseline(xtr, ytr, xte, yte, seed, epochs):
    pyro.clear_param_store()
    torch.manual_seed(seed)
    xm, xs, ym, ys = xtr.mean(0), xtr.std(0), ytr.mean(), ytr.std()
    a, b = (xtr - xm) / xs, (ytr - ym) / ys
    net = PyroMLP(xtr.shape[1])
    n = len(a)
    model = lambda x, y: net(x, y, num_data=n)  # noqa: E731
    guide = AutoNormal(model)
    pr.fit(
        model,
        guide,
        (a, b),
        elbo=Trace_ELBO(),
        epochs=epochs,
        batch_size=BATCH,
        seed=seed,
        optim=pyro.optim.ClippedAdam({"lr": LR, "clip_norm": 10.0}),
        progress=False,
    )
    post = Predictive(net, guide=guide, num_samples=200, return_sites=["f", "sigma", "obs"])
    with torch.no_grad():
        draws = post((xte - xm) / xs)
    y = draws["obs"] * ys + ym  # (S, B) draws of y, original units
    f, sigma = draws["f"] * ys + ym, draws["sigma"].reshape(-1, 1) * ys
    lp = dist.Normal(f, sigma).log_prob(yte)
    nll = -(torch.logsumexp(lp, 0) - math.log(lp.shape[0])).mean().item()
    lo, hi = torch.quantile(y, torch.tensor([0.05, 0.95]), dim=0)
    rmse = ((y.mean(0) - yte) ** 2).mean().sqrt().item()
    return rmse, nll, interval_coverage(yte, lo, hi)


def plugin_scores(xtr, ytr, xte, yte, seed, epochs, **options):
    """Test RMSE, NLL and 90% coverage of ``BayesianMLP(**options)`` trained on ``xtr, ytr``."""
    pyro.clear_param_store()
    torch.manual_seed(seed)
    bnn = BayesianMLP(xtr.shape[1], 1, (HIDDEN,), **options)
    bnn.fit(xtr, ytr, epochs=epochs, batch_size=BATCH, lr=LR, seed=seed)
    return network_scores(bnn, xte, yte, 200)


def network_scores(bnn: BayesianMLP, xte, yte, num_samples: int):
    """Test RMSE, NLL per point and 90% coverage of a fitted ``BayesianMLP`` (guide or HMC
    draws, ``num_samples`` of them)."""
    p = bnn.predict(xte, num_samples=num_samples)
    nll = -bnn.log_predictive_density(xte, yte, num_samples=num_samples).mean().item()
    rmse = ((p["mean"] - yte) ** 2).mean().sqrt().item()
    return rmse, nll, interval_coverage(yte, p["quantiles"][0], p["quantiles"][2])


def ridge_scores(xtr, ytr, xte, yte, seed=0, epochs=0):
    """The same three scores for ``BayesianRidge`` (``seed``, ``epochs``: unused)."""
    br = BayesianRidge().fit(xtr.numpy(), ytr.numpy())
    m, s = br.predict(xte.numpy(), return_std=True)
    m, s = torch.tensor(m, dtype=torch.float64), torch.tensor(s, dtype=torch.float64)
    y = yte.double()
    nll = -dist.Normal(m, s).log_prob(y).mean().item()
    rmse = ((m - y) ** 2).mean().sqrt().item()
    return rmse, nll, interval_coverage(y, m - Z90 * s, m + Z90 * s)


def run(out: Path, quick: bool = False, log=print) -> dict:
    torch.set_num_threads(1)
    x, y = load_diabetes(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    splits = 2 if quick else SPLITS
    epochs = 20 if quick else EPOCHS
    methods = {
        "pyro_reparam BayesianMLP (local)": plugin_scores,
        "Pyro out of the box (AutoNormal)": _pyro_baseline,
        "BayesianRidge": ridge_scores,
    }
    scores = {m: [] for m in methods}
    for split in range(splits):
        tr, te = train_test(len(x), split)
        for name, fn in methods.items():
            t = time.perf_counter()
            scores[name].append(fn(x[tr], y[tr], x[te], y[te], split, epochs))
            log(
                f"split {split} {name:<34} rmse {scores[name][-1][0]:6.2f} "
                f"nll {scores[name][-1][1]:6.3f} cov {scores[name][-1][2]:.2f} "
                f"({time.perf_counter() - t:.0f} s)"
            )
    table, rows = {}, []
    for name, vals in scores.items():
        cols = list(zip(*vals, strict=True))
        stats = [(statistics.mean(c), statistics.stdev(c) / math.sqrt(len(c))) for c in cols]
        table[name] = dict(zip(("rmse", "nll", "coverage90"), stats, strict=True))
        rows.append([name, *(f"{m:.3f} ± {s:.3f}" for m, s in stats)])
    text = format_table(["model", "test RMSE", "test NLL", "90% coverage"], rows)
    log(text)
    plugin_nll = [v[1] for v in scores["pyro_reparam BayesianMLP (local)"]]
    ridge_nll = [v[1] for v in scores["BayesianRidge"]]
    diff = [a - b for a, b in zip(plugin_nll, ridge_nll, strict=True)]
    paired = (statistics.mean(diff), statistics.stdev(diff) / math.sqrt(len(diff)))
    log(f"plugin minus BayesianRidge NLL, paired over splits: {paired[0]:+.3f} ± {paired[1]:.3f}")
    summary = {"splits": splits, "epochs": epochs, "quick": quick, "results": table,
               "per_split": scores, "plugin_minus_ridge_nll": paired}  # fmt: skip
    write(
        out,
        "bnn_uci",
        summary,
        f"BNNs on diabetes: {splits} random 90/10 splits, {epochs} epochs",
        f"```\n{text}\n```\n\nplugin minus BayesianRidge test NLL (paired): "
        f"{paired[0]:+.3f} ± {paired[1]:.3f}\n",
    )
    return summary
