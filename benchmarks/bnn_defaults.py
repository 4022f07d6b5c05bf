"""How ``BayesianMLP``'s regression defaults were chosen: on validation data only.

For each of the first ``SPLITS`` diabetes splits of ``bnn_uci``, only the *training* part is
used: 20% of it (a fixed random subset) is held out for validation and the candidates are
trained on the other 80% (one hidden layer of 50, ``EPOCHS`` epochs, batch 128,
ClippedAdam(0.01), local reparameterization). Reported: validation NLL per point minus
BayesianRidge's on the same validation data, mean and standard error over the splits. The test
parts of the splits are never touched, so ``bnn_uci`` can score the chosen default honestly.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch
from sklearn.datasets import load_diabetes

from benchmarks.bnn_uci import plugin_scores, ridge_scores, train_test
from benchmarks.report import write
from pyro_reparam.tables import format_table

SPLITS, EPOCHS = 5, 500
CANDIDATES = {
    "homoscedastic, fan-in prior": {"noise": "homoscedastic"},
    "homoscedastic, prior N(0, 1)": {"noise": "homoscedastic", "prior": 1.0},
    "heteroscedastic, fan-in prior": {"noise": "heteroscedastic"},
    "heteroscedastic, prior N(0, 1)": {"noise": "heteroscedastic", "prior": 1.0},
}


def _validation(n_train: int, split: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (within the training part) of the fitting and validation subsets."""
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(7 + split))
    return perm[n_train // 5 :], perm[: n_train // 5]


def run(out: Path, quick: bool = False, log=print) -> dict:
    torch.set_num_threads(1)
    x, y = load_diabetes(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    splits, epochs = (1, 20) if quick else (SPLITS, EPOCHS)
    diffs = {name: [] for name in CANDIDATES}
    for split in range(splits):
        tr, _test_never_used = train_test(len(x), split)
        fit_part, val_part = _validation(len(tr), split)
        xf, yf, xv, yv = x[tr][fit_part], y[tr][fit_part], x[tr][val_part], y[tr][val_part]
        ridge = ridge_scores(xf, yf, xv, yv)[1]
        for name, options in CANDIDATES.items():
            nll = plugin_scores(xf, yf, xv, yv, split, epochs, **options)[1]
            diffs[name].append(nll - ridge)
            log(f"split {split} {name:<32} validation NLL {nll:.4f} (BayesianRidge {ridge:.4f})")
    table, rows = {}, []
    for name, d in diffs.items():
        se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
        table[name] = {"minus_ridge": statistics.mean(d), "se": se, "per_split": d}
        rows.append([name, f"{statistics.mean(d):+.4f} ± {se:.4f}"])
    text = format_table(["candidate", "validation NLL minus BayesianRidge"], rows)
    chosen = min(table, key=lambda n: table[n]["minus_ridge"])
    log(text)
    log(f"chosen: {chosen}")
    summary = {"splits": splits, "epochs": epochs, "quick": quick, "results": table,
               "chosen": chosen}  # fmt: skip
    write(
        out,
        "bnn_defaults",
        summary,
        f"BayesianMLP defaults chosen on validation data inside the training parts ({splits} "
        "splits)",
        f"```\n{text}\n```\n\nchosen: {chosen}\n",
    )
    return summary
