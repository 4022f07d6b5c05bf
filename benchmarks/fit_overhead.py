"""Per-step cost of ``pr.fit`` against a bare ``svi.step`` loop with the same ELBO (issue 19).

A small users' model/guide pair: Bayesian multinomial regression on the digits (64 features,
10 classes), ``AutoNormal``, ``Adam(1e-2)``, batch 256, the same minibatches (fit's documented
epoch permutations) in both loops. ``fit`` adds its finiteness checks, epoch records and
optimizer bookkeeping; these rows say what that costs:

* the bare ``SVI.step`` loop with ``Trace_ELBO`` (the reference);
* ``pr.fit`` with the same ``Trace_ELBO``; with ``jit=True`` (``JitTrace_ELBO``);
* the routed ELBO (``elbo=None``: ``route`` builds it; for this pair ``TraceMeanField_ELBO``)
  in a bare ``SVI.step`` loop, and through ``pr.fit`` without and with ``jit=True`` (the routed
  ELBO's plan around the compiled twin of its inner ELBO).

Every configuration runs ``REPEATS`` times, interleaved, one torch thread; the table gives the
median seconds per step and the ratio to the reference measured in the same run.

The plugin's ``ScoreFunctionELBO`` has no compiled form: ``torch.jit.trace`` cannot record its
provenance tensors or its baselines' Python state (``fit(jit=True)`` runs it uncompiled and says
so), and ``torch.compile`` of its ``differentiable_loss`` fails in Dynamo ("unsupported operand
type(s) for +: 'ProvenanceTensor' and 'tuple'", measured with torch 2.14 after ~40 s of
compiling); it has no row here.
"""

from __future__ import annotations

from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

import pyro_reparam as pr
from benchmarks.report import write
from benchmarks.timing import ratio_table
from pyro_reparam.apps.data import load_digits

BATCH = 256
REPEATS = 9
REFERENCE = "bare svi.step loop, Trace_ELBO (reference)"


def model(x, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(64, 10), 1.0).to_event(2))
    b = pyro.sample("b", dist.Normal(torch.zeros(10), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Categorical(logits=x @ w + b), obs=y)


def _bare_loop(x, y, epochs, seed, routed=False):
    pyro.clear_param_store()
    guide = AutoNormal(model)
    elbo = pr.route(model, guide, x[:BATCH], y[:BATCH]).elbo() if routed else Trace_ELBO()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    pyro.set_rng_seed(seed)
    n = len(x)
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        for i in range(0, n, BATCH):
            idx = perm[i : i + BATCH]
            svi.step(x[idx], y[idx])


def _fit(x, y, epochs, seed, elbo, jit=False):
    pyro.clear_param_store()
    pr.fit(model, AutoNormal(model), (x, y), elbo=elbo, optim=pyro.optim.Adam({"lr": 1e-2}),
           epochs=epochs, batch_size=BATCH, seed=seed, progress=False, jit=jit,
           log=lambda _msg: None)  # fmt: skip


def run(out: Path, quick: bool = False, log=print) -> dict:
    torch.set_num_threads(1)
    data = load_digits("train")
    x, y = data.images, data.labels
    epochs = 2 if quick else 15
    steps = epochs * -(-len(x) // BATCH)
    configs = {
        REFERENCE: lambda: _bare_loop(x, y, epochs, 0),
        "pr.fit, Trace_ELBO": lambda: _fit(x, y, epochs, 0, Trace_ELBO()),
        "pr.fit, Trace_ELBO, jit=True": lambda: _fit(x, y, epochs, 0, Trace_ELBO(), jit=True),
        "bare svi.step loop, routed ELBO": lambda: _bare_loop(x, y, epochs, 0, routed=True),
        "pr.fit, routed ELBO (elbo=None)": lambda: _fit(x, y, epochs, 0, None),
        "pr.fit, routed ELBO, jit=True": lambda: _fit(x, y, epochs, 0, None, jit=True),
    }
    repeats = 2 if quick else REPEATS
    table, text = ratio_table(configs, REFERENCE, repeats, steps, "step", "loop", ms_digits=3)
    log(text)
    summary = {"batch_size": BATCH, "steps": steps, "repeats": repeats, "threads": 1,
               "quick": quick, "results": table}  # fmt: skip
    write(
        out,
        "fit_overhead",
        summary,
        f"pr.fit against a bare svi.step loop, CPU, batch {BATCH}, {steps} steps per run",
        f"{repeats} interleaved repeats, one torch thread; ratio to the bare Trace_ELBO loop "
        f"measured in the same run. ScoreFunctionELBO has no compiled form (see the module "
        f"docstring).\n\n```\n{text}\n```\n",
    )
    return summary
