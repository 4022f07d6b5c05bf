"""Seconds per epoch of the plugin's Bayesian MLP against hand-written PyTorch (issue 19).

Diabetes, the training part of split 0 of ``benchmarks/bnn_uci.py`` (398 rows), standardized;
10 -> 50 -> 2 (mean and noise outputs, the default heteroscedastic regression), batch 32, so 13
steps per epoch; learning rate 0.01.

* **reference**: Bayes by backprop written by hand in plain PyTorch, the plugin's default
  estimator and objective: mean-field Gaussian weights and biases with softplus scales, local
  reparameterization of every layer, closed-form KL to the fan-in priors, ``N / B`` scaled
  log-likelihood, ``torch.optim.Adam``, a ``randperm`` shuffle per epoch; nothing else;
* ``BayesianMLP.fit`` with its default ELBO (``BayesianMLPELBO``, computed directly from the
  module) and everything ``fit`` does per step and epoch: the finiteness checks, ``ClippedAdam``
  (one fused optimizer call, :mod:`pyro_reparam.train.fused`), the epoch's records with the two
  ELBO terms (8-draw expected log-likelihood, closed-form KL);
* ``BayesianMLP.fit`` with ``elbo(traced=True)``: Pyro's ``TraceMeanField_ELBO`` on the model and
  guide under the local-reparameterization handler;
* the same network as Pyro's tutorials write it (``PyroModule`` + ``AutoNormal`` + ``Trace_ELBO``,
  trained by ``pr.fit``), for scale.

Every configuration runs ``REPEATS`` times, interleaved (benchmarks/timing.py), with one torch
thread; the table gives the median seconds per epoch and the ratio to the reference measured in
the same run (below 1: faster than the hand-written loop). ``DEVICE=cuda`` runs it on a GPU.
"""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from sklearn.datasets import load_diabetes

import pyro_reparam as pr
from benchmarks.bnn_uci import PyroMLP, train_test
from benchmarks.report import write
from benchmarks.timing import ratio_table
from pyro_reparam.models import BayesianMLP

BATCH, LR, HIDDEN, REPEATS = 32, 0.01, 50, 9
REFERENCE = "hand-written PyTorch Bayes by backprop (reference)"


def data(device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The training part of split 0 of the diabetes benchmark (398 rows, raw units)."""
    x, y = load_diabetes(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    train, _ = train_test(len(x), 0)
    return x[train].to(device), y[train].to(device)


def _kl(loc, scale, prior_scale: float):
    ratio = scale / prior_scale
    return (0.5 * (ratio.pow(2) + (loc / prior_scale).pow(2)) - ratio.log() - 0.5).sum()


def hand_written(x, y, epochs: int, seed: int = 0) -> list[torch.Tensor]:
    """Bayes by backprop in plain PyTorch (see the module docstring); returns the parameters."""
    torch.manual_seed(seed)
    xs, ys = (x - x.mean(0)) / x.std(0), (y - y.mean()) / y.std()
    sizes, raw = [x.shape[1], HIDDEN, 2], math.log(math.expm1(1e-3))
    layers = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers.append([
            torch.nn.Parameter(torch.randn(fan_out, fan_in, device=x.device) / math.sqrt(fan_in)),
            torch.nn.Parameter(torch.full((fan_out, fan_in), raw, device=x.device)),
            torch.nn.Parameter(torch.randn(fan_out, device=x.device)),
            torch.nn.Parameter(torch.full((fan_out,), raw, device=x.device)),
        ])  # fmt: skip
    priors = [1 / math.sqrt(fan_in) for fan_in in sizes[:-1]]
    params = [p for layer in layers for p in layer]
    optim = torch.optim.Adam(params, lr=LR)
    n = len(xs)
    for _ in range(epochs):
        perm = torch.randperm(n, device=x.device)
        for start in range(0, n, BATCH):
            idx = perm[start : start + BATCH]
            h, target = xs[idx], ys[idx]
            kl = 0.0
            for i, ((loc, raw_scale, bias_loc, bias_raw), prior) in enumerate(
                zip(layers, priors, strict=True)
            ):
                scale, bias_scale = F.softplus(raw_scale), F.softplus(bias_raw)
                mean = F.linear(h, loc, bias_loc)
                var = F.linear(h.pow(2), scale.pow(2), bias_scale.pow(2))
                std = var.clamp(min=torch.finfo(var.dtype).tiny).sqrt()
                h = mean + std * torch.randn_like(mean)
                if i < len(layers) - 1:
                    h = torch.relu(h)
                kl = kl + _kl(loc, scale, prior) + _kl(bias_loc, bias_scale, 1.0)
            noise = F.softplus(h[:, 1]) + 1e-3
            log_lik = torch.distributions.Normal(h[:, 0], noise, validate_args=False)
            loss = kl - n / len(idx) * log_lik.log_prob(target).sum()
            optim.zero_grad()
            loss.backward()
            optim.step()
    return params


def _plugin(x, y, epochs, device, traced):
    pyro.clear_param_store()
    torch.manual_seed(0)
    bnn = BayesianMLP(x.shape[1], 1, (HIDDEN,))
    elbo = bnn.elbo(num_data=len(x), traced=traced)
    return bnn.fit(x, y, epochs=epochs, batch_size=BATCH, lr=LR, device=device, elbo=elbo)


def _pyro(x, y, epochs, device):
    pyro.clear_param_store()
    net = PyroMLP(x.shape[1]).to(device)
    n = len(x)
    model = lambda x, y: net(x, y, num_data=n)  # noqa: E731
    xs, ys = (x - x.mean(0)) / x.std(0), (y - y.mean()) / y.std()
    pr.fit(model, AutoNormal(model), (xs, ys), elbo=Trace_ELBO(), epochs=epochs,
           batch_size=BATCH, optim=pyro.optim.ClippedAdam({"lr": LR, "clip_norm": 10.0}),
           device=device, progress=False)  # fmt: skip


def run(out: Path, quick: bool = False, log=print) -> dict:
    device = os.environ.get("DEVICE", "cpu")
    torch.set_num_threads(1)
    x, y = data(device)
    epochs = 3 if quick else 30
    steps = -(-len(x) // BATCH)
    configs = {
        REFERENCE: lambda: hand_written(x, y, epochs),
        "BayesianMLP.fit (default: direct ELBO)": lambda: _plugin(x, y, epochs, device, False),
        "BayesianMLP.fit, elbo(traced=True)": lambda: _plugin(x, y, epochs, device, True),
        "Pyro: PyroModule + AutoNormal + Trace_ELBO, pr.fit": lambda: _pyro(x, y, epochs, device),
    }
    repeats = 2 if quick else REPEATS
    table, text = ratio_table(configs, REFERENCE, repeats, epochs, "epoch", "training loop")
    log(text)
    summary = {"device": device, "epochs": epochs, "batch_size": BATCH, "steps_per_epoch": steps,
               "repeats": repeats, "threads": 1, "quick": quick, "results": table}  # fmt: skip
    write(
        out,
        "bnn_speed",
        summary,
        f"BNN time per epoch, diabetes 10-{HIDDEN}-2, batch {BATCH} ({steps} steps), {device}",
        f"{repeats} interleaved repeats of {epochs} epochs, one torch thread; ratio to the "
        f"hand-written loop measured in the same run.\n\n```\n{text}\n```\n",
    )
    return summary
