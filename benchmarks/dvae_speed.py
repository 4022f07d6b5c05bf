"""Seconds per step of the DiscreteVAE's leave-one-out score-function step against the same
estimator written by hand in PyTorch (issue 19).

Binarized digits (train split), 64 -> 200 -> 64 Bernoulli latents -> 200 -> 64, tanh, Bernoulli
pixels, learned prior logits, K = 4 particles, batch 128, Adam(1e-3); the routed default of
``DiscreteVAE(estimator="score")``: ScoreFunctionELBO with a leave-one-out baseline per datum.

* **reference**: the estimator by hand: ``z_k ~ q(z | x)``, ``f_k = log p(z_k) + log p(x | z_k)
  - log q(z_k | x)``, ``b_k`` the mean of the other particles' ``f``, surrogate
  ``-(1/K) sum [log p(z_k) + log p(x | z_k) + log q(z_k | x) (f_k - b_k)]``, ``torch.optim.Adam``;
* ``DiscreteVAE.elbo()`` (``DiscreteVAEELBO``, direct) in a bare ``SVI.step`` loop and through
  ``pr.fit``;
* the routed ELBO (what ``pr.fit(dvae.model, dvae.guide, x)`` builds) in ``SVI.step`` and
  ``pr.fit``.

Each configuration runs ``REPEATS`` times, interleaved, one torch thread; the ratio is to the
hand-written loop measured in the same run.
"""

from __future__ import annotations

from pathlib import Path

import pyro
import torch
from pyro.infer import SVI
from torch import nn

import pyro_reparam as pr
from benchmarks.report import write
from benchmarks.timing import ratio_table
from pyro_reparam.apps.data import load_digits
from pyro_reparam.models import DiscreteVAE

BATCH, K, LR, LATENTS, HIDDEN, REPEATS = 128, 4, 1e-3, 64, 200, 7
REFERENCE = "hand-written PyTorch, same estimator (reference)"


def _batches(x, epochs, seed=0):
    n = len(x)
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        for i in range(0, n, BATCH):
            yield x[perm[i : i + BATCH]]


def hand_written(x, epochs):
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(64, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, LATENTS))
    dec = nn.Sequential(nn.Linear(LATENTS, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 64))
    prior = nn.Parameter(torch.zeros(LATENTS))
    optim = torch.optim.Adam([*enc.parameters(), *dec.parameters(), prior], lr=LR)
    bce = nn.functional.binary_cross_entropy_with_logits
    for xb in _batches(x, epochs):
        logits = enc(xb)
        z = torch.bernoulli(torch.sigmoid(logits).expand(K, *logits.shape))
        log_q = -bce(logits.expand_as(z), z, reduction="none").sum(-1)
        log_pz = -bce(prior.expand_as(z), z, reduction="none").sum(-1)
        out = dec(z)
        log_px = -bce(out, xb.expand_as(out), reduction="none").sum(-1)
        f = log_pz + log_px - log_q
        c = f.detach()
        b = (c.sum(0, keepdim=True) - c) / (K - 1)
        surrogate = -(log_pz.sum() + log_px.sum() + (log_q * (c - b)).sum()) / K
        optim.zero_grad()
        surrogate.backward()
        optim.step()
        (-c.sum() / K).item()  # the loss estimate, as every ELBO returns it


def _dvae():
    pyro.clear_param_store()
    torch.manual_seed(0)
    return DiscreteVAE(64, num_latents=LATENTS, hidden=(HIDDEN,))


def _svi(x, epochs, direct):
    dvae = _dvae()
    elbo = (
        dvae.elbo(K) if direct else pr.route(dvae.model, dvae.guide, x[:BATCH]).elbo(direct=False)
    )
    svi = SVI(dvae.model, dvae.guide, pyro.optim.Adam({"lr": LR}), elbo)
    for xb in _batches(x, epochs):
        svi.step(xb)


def _fit(x, epochs, direct):
    dvae = _dvae()
    routed = None if direct else pr.route(dvae.model, dvae.guide, x[:BATCH]).elbo(direct=False)
    pr.fit(dvae.model, dvae.guide, x, elbo=dvae.elbo(K) if direct else routed,
           optim=pyro.optim.Adam({"lr": LR}), epochs=epochs, batch_size=BATCH, progress=False,
           log=lambda _msg: None)  # fmt: skip


def run(out: Path, quick: bool = False, log=print) -> dict:
    torch.set_num_threads(1)
    x = load_digits("train").binarized().images
    epochs = 1 if quick else 4
    steps = epochs * -(-len(x) // BATCH)
    configs = {
        REFERENCE: lambda: hand_written(x, epochs),
        "DiscreteVAE.elbo() (direct), SVI.step": lambda: _svi(x, epochs, True),
        "DiscreteVAE.elbo() (direct), pr.fit": lambda: _fit(x, epochs, True),
        "routed ELBO (traced), SVI.step": lambda: _svi(x, epochs, False),
        "routed ELBO (traced), pr.fit": lambda: _fit(x, epochs, False),
    }
    repeats = 2 if quick else REPEATS
    table, text = ratio_table(configs, REFERENCE, repeats, steps, "step", "training loop")
    log(text)
    summary = {"batch_size": BATCH, "particles": K, "steps": steps, "repeats": repeats,
               "threads": 1, "quick": quick, "results": table}  # fmt: skip
    write(
        out,
        "dvae_speed",
        summary,
        f"DiscreteVAE leave-one-out step (K = {K}), digits 64-{HIDDEN}-{LATENTS}, batch {BATCH}",
        f"{repeats} interleaved repeats of {steps} steps, one torch thread; ratio to the "
        f"hand-written loop measured in the same run.\n\n```\n{text}\n```\n",
    )
    return summary
