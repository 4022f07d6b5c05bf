"""Seconds per epoch of a Bayesian MLP (diabetes, 10 -> 50 -> 1, batch 128), plugin vs Pyro.

* the plugin's ``BayesianMLP`` trained by ``BayesianMLP.fit`` (local reparameterization,
  closed-form KL) with its default ELBO, ``BayesianMLPELBO``, which computes the mean-field
  ELBO directly from the module, and with ``elbo(traced=True)``, the same objective through
  Pyro's ``TraceMeanField_ELBO`` on the model and guide;
* the same network as Pyro's tutorials write it: ``PyroModule[nn.Linear]`` with
  ``PyroSample`` priors, ``AutoNormal``, ``Trace_ELBO``, trained by the same ``pr.fit`` loop.

Same data, batches, epochs and optimizer; each configuration is timed ``REPEATS`` times,
interleaved, and the table gives the median seconds per epoch and the speed-up over Pyro.
``DEVICE=cuda`` runs it on a GPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyro
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from sklearn.datasets import load_diabetes

import pyro_reparam as pr
from benchmarks.bnn_uci import PyroMLP
from benchmarks.report import write
from benchmarks.timing import interleaved_medians
from pyro_reparam.models import BayesianMLP
from pyro_reparam.tables import format_table

BATCH, LR, REPEATS = 128, 0.01, 5


def _plugin(x, y, epochs, device, traced):
    pyro.clear_param_store()
    bnn = BayesianMLP(x.shape[1], 1, (50,))
    bnn.fit(x, y, epochs=epochs, batch_size=BATCH, lr=LR, device=device,
            elbo=bnn.elbo(num_data=len(x), traced=traced))  # fmt: skip


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
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    x, y = load_diabetes(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    epochs = 5 if quick else 100
    configs = {
        "Pyro: PyroModule + AutoNormal + Trace_ELBO": lambda: _pyro(x, y, epochs, device),
        "pyro_reparam BayesianMLP (default)": lambda: _plugin(x, y, epochs, device, False),
        "pyro_reparam BayesianMLP, traced ELBO": lambda: _plugin(x, y, epochs, device, True),
    }
    medians = interleaved_medians(configs, 2 if quick else REPEATS, epochs)
    base = medians["Pyro: PyroModule + AutoNormal + Trace_ELBO"]
    table, rows = {}, []
    for name, med in medians.items():
        table[name] = {"seconds_per_epoch": med, "speedup_over_pyro": base / med}
        rows.append([name, f"{med * 1e3:.1f} ms", f"{base / med:.2f}x"])
    text = format_table(["model", "per epoch (median)", "speed-up over Pyro"], rows)
    log(text)
    summary = {"device": device, "epochs": epochs, "batch_size": BATCH, "quick": quick,
               "results": table}  # fmt: skip
    write(
        out,
        "bnn_speed",
        summary,
        f"BNN time per epoch, diabetes 10-50-1, batch {BATCH}, {device}",
        f"```\n{text}\n```\n",
    )
    return summary
