"""Per-step overhead of ``pr.fit`` against a hand-written ``svi.step`` loop, CPU, batch 256.

Both train the same Bayesian multinomial regression on the digits (64 features, 10 classes,
AutoNormal, Trace_ELBO, Adam) through the same minibatches; ``fit`` adds the gradient-norm
finiteness check, the epoch records and, when asked, the progress bar; ``jit=True`` swaps in
``JitTrace_ELBO``. Each configuration is
timed ``REPEATS`` times (interleaved); the table gives the median seconds per step.
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
from benchmarks.timing import interleaved_medians
from pyro_reparam.apps.data import load_digits
from pyro_reparam.tables import format_table

BATCH = 256
REPEATS = 7


def model(x, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(64, 10), 1.0).to_event(2))
    b = pyro.sample("b", dist.Normal(torch.zeros(10), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Categorical(logits=x @ w + b), obs=y)


def _hand_loop(x, y, epochs, seed):
    pyro.clear_param_store()
    svi = SVI(model, AutoNormal(model), pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    pyro.set_rng_seed(seed)
    n = len(x)
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        for i in range(0, n, BATCH):
            idx = perm[i : i + BATCH]
            svi.step(x[idx], y[idx])


def _fit(x, y, epochs, seed, progress, jit=False):
    pyro.clear_param_store()
    pr.fit(
        model,
        AutoNormal(model),
        (x, y),
        elbo=Trace_ELBO(),
        optim=pyro.optim.Adam({"lr": 1e-2}),
        epochs=epochs,
        batch_size=BATCH,
        seed=seed,
        progress=progress,
        jit=jit,
    )


def run(out: Path, quick: bool = False, log=print) -> dict:
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    data = load_digits("train")
    x, y = data.images, data.labels
    epochs = 3 if quick else 20
    steps = epochs * -(-len(x) // BATCH)
    configs = {
        "hand-written svi.step loop": lambda: _hand_loop(x, y, epochs, 0),
        "pr.fit, progress=False": lambda: _fit(x, y, epochs, 0, False),
        "pr.fit, progress bar": lambda: _fit(x, y, epochs, 0, True),
        "pr.fit, jit=True": lambda: _fit(x, y, epochs, 0, False, jit=True),
    }
    medians = interleaved_medians(configs, 2 if quick else REPEATS, steps)
    base = medians["hand-written svi.step loop"]
    table, rows = {}, []
    for name, med in medians.items():
        table[name] = {"seconds_per_step": med, "overhead": med / base - 1}
        rows.append([name, f"{med * 1e3:.3f} ms", f"{100 * (med / base - 1):+.1f}%"])
    text = format_table(["loop", "per step (median)", "overhead"], rows)
    log(text)
    summary = {"batch_size": BATCH, "steps": steps, "quick": quick, "results": table}
    write(
        out,
        "fit_overhead",
        summary,
        f"pr.fit overhead, CPU, batch {BATCH}, {steps} steps per run",
        f"```\n{text}\n```\n",
    )
    return summary
