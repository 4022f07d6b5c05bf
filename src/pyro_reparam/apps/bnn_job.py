"""The command-line job ``pyro-reparam train bnn``: fit a BayesianMLP, score it, draw it,
and write its ArviZ diagnostics.

Data: ``diabetes`` (regression), ``digits`` (classification), ``toy`` (1-D regression with a
gap in the inputs), or a user's ``.csv`` (header row; ``target`` names the column, default the
last) or ``.npz`` (arrays ``x`` and ``target``, default ``y``). Inputs and targets are
standardized with training statistics; metrics are in original units.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyro
import torch

from pyro_reparam.diagnostics import check_plateau, diagnose, save_figure, to_datatree
from pyro_reparam.models.bnn import BayesianMLP, expected_calibration_error, interval_coverage
from pyro_reparam.plotting import pyplot

TEST_FRACTION = 0.1
INFERENCE = ("vi", "hmc")


@dataclass
class BNNJob:
    """The CLI's options."""

    task: str | None = None
    data: str = "diabetes"
    target: str | None = None
    guide: str = "local"
    prior: str | float = "fan_in"
    inference: str = "vi"
    hidden: tuple[int, ...] = (50,)
    epochs: int = 500
    hmc_samples: int = 300
    batch_size: int = 128
    lr: float = 0.01
    device: str = "cpu"
    out: Path = Path("runs/bnn")
    seed: int = 0
    progress: bool = True
    resume: bool = False


MAX_CLASSES = 100


def toy_gap(n: int = 160, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``y = sin(2x) + x / 2 + 0.15 eps`` with ``x`` in [-3, -1] and [1, 3]: no data in the gap."""
    g = torch.Generator().manual_seed(seed)
    side = torch.randint(0, 2, (n,), generator=g) * 2 - 1
    x = side * (1 + 2 * torch.rand(n, generator=g))
    y = torch.sin(2 * x) + x / 2 + 0.15 * torch.randn(n, generator=g)
    return x[:, None], y


def load_table(source: str, target: str | None = None):
    """(x, y, task, name) for a named data set or a user's CSV/NPZ file."""
    if target is not None and source in ("diabetes", "digits", "toy"):
        raise ValueError(
            f"--target {target!r}: the built-in data set {source} has its own target; --target "
            "names a column of a .csv file or an array of a .npz file"
        )
    if source == "diabetes":
        from sklearn.datasets import load_diabetes

        x, y = load_diabetes(return_X_y=True)
        return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32), \
            "regression", "diabetes"  # fmt: skip
    if source == "digits":
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        return torch.tensor(x / 16, dtype=torch.float32), torch.tensor(y), "classification", \
            "digits"  # fmt: skip
    if source == "toy":
        x, y = toy_gap()
        return x, y, "regression", "toy"
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"train bnn: no file at {path} (or use diabetes, digits, toy)")
    if path.suffix == ".csv":
        lines = path.read_text().splitlines()
        if not lines:
            raise ValueError(f"train bnn: {path} is empty; it needs a header row and data rows")
        header = [c.strip() for c in lines[0].split(",")]
        column = target or header[-1]
        if column not in header:
            raise ValueError(f"train bnn: {path} has no column {column!r}; columns: {header}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "input contained no data": below
                table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
        except ValueError as err:
            raise ValueError(
                f"train bnn: {path} has a non-numeric or ragged row ({str(err).splitlines()[0]})"
            ) from None
        if table.shape[0] == 0 or table.shape[1] != len(header):
            raise ValueError(
                f"train bnn: {path} has {table.shape[0]} data rows of {table.shape[1]} columns "
                f"under a header of {len(header)}; it needs at least one full row"
            )
        j = header.index(column)
        x, y = np.delete(table, j, axis=1), table[:, j]
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            key = target or "y"
            if "x" not in f or key not in f:
                raise ValueError(f"train bnn: {path} needs arrays 'x' and {key!r}; has {list(f)}")
            x, y = f["x"], f[key]
    else:
        raise ValueError(f"train bnn: {path} is neither .csv nor .npz")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError(f"train bnn: {path} contains NaN or inf")
    integer = np.issubdtype(y.dtype, np.integer) or np.all(np.equal(np.mod(y, 1), 0))
    task = "classification" if integer and len(np.unique(y)) <= 20 else "regression"
    yt = torch.tensor(y, dtype=torch.long if task == "classification" else torch.float32)
    return torch.tensor(x, dtype=torch.float32).reshape(len(x), -1), yt, task, path.stem


def train_bnn(job: BNNJob) -> dict:
    x, y, task, name = load_table(job.data, job.target)
    task = _checked_task(job.task or task, y, name)
    y = y.long() if task == "classification" else y.float()
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    xtr, ytr, xte, yte = _split(x, y, name, job.seed)
    classes = int(y.max()) + 1 if task == "classification" else 1
    pyro.clear_param_store()
    torch.manual_seed(job.seed)
    if job.inference not in INFERENCE:
        raise ValueError(f"train bnn: inference must be one of {INFERENCE}, got {job.inference!r}")
    hmc = job.inference == "hmc"
    noise = "homoscedastic" if hmc and task == "regression" else None
    bnn = BayesianMLP(x.shape[1], classes, job.hidden, task=task, guide=job.guide,
                      prior=job.prior, noise=noise)  # fmt: skip
    metrics = {"model": "BayesianMLP", "data": name, "task": task, "inference": job.inference,
               "prior": job.prior, "hidden": list(job.hidden)}  # fmt: skip
    t = time.perf_counter()
    if hmc:
        result = bnn.fit_hmc(xtr, ytr, num_samples=job.hmc_samples, warmup=job.hmc_samples,
                             seed=job.seed, device=job.device, progress=job.progress)  # fmt: skip
    else:
        history = bnn.fit(xtr, ytr, epochs=job.epochs, batch_size=job.batch_size, lr=job.lr,
                          seed=job.seed, progress=job.progress, checkpoint_dir=out,
                          resume=job.resume,
                          device=job.device)  # fmt: skip
    metrics["seconds"] = time.perf_counter() - t
    bnn.to("cpu")  # scoring, plots and diagnostics on the CPU
    if bnn.prior_fit is not None:
        metrics["prior_scales"] = dataclasses.asdict(bnn.prior_fit)
    if hmc:
        rhat = bnn.hmc_rhat(xtr)
        metrics |= {"accept_rate": result.accept_rate.tolist(),
                    "divergences": result.divergences.tolist(),
                    "step_size": result.step_size.tolist(),
                    "rhat_function_median": rhat.median().item(),
                    "rhat_function_max": rhat.max().item()}  # fmt: skip
        torch.save({"state_dict": bnn.state_dict(), "samples": result.samples.cpu()},
                   out / "hmc_samples.pt")  # fmt: skip
        files = {"checkpoint": out / "hmc_samples.pt"}
    else:
        check_plateau(history)
        metrics |= {"guide": job.guide, "epochs": job.epochs, "train_elbo": history.train_elbo,
                    "kl": [r["kl"] for r in history.records],
                    "expected_log_likelihood": [r["expected_log_likelihood"]
                                                for r in history.records]}  # fmt: skip
        files = {"elbo": history.plot(out / "elbo.png", "BNN ELBO per datum (standardized units)"),
                 "checkpoint": history.checkpoint}  # fmt: skip
    nll = -bnn.log_predictive_density(xte, yte).mean().item()
    if task == "regression":
        p = bnn.predict(xte)
        metrics |= {
            "test_rmse": ((p["mean"] - yte) ** 2).mean().sqrt().item(),
            "test_nll": nll,
            "coverage90": interval_coverage(yte, p["quantiles"][0], p["quantiles"][2]),
        }
        draw = _bands if name == "toy" else _calibration
        data = (xtr, ytr) if name == "toy" else (xte, yte)
        files["predictive"] = draw(bnn, *data, out / "predictive.png")
    else:
        probs = bnn.predict(xte)["probs"]
        metrics |= {
            "test_accuracy": (probs.argmax(-1) == yte).float().mean().item(),
            "test_nll": nll,
            "ece": expected_calibration_error(probs, yte),
        }
        files["predictive"] = _reliability(probs, yte, out / "predictive.png")
    metrics["diagnostics"] = _diagnostics(bnn, xtr, ytr, out / "diagnostics")
    metrics["files"] = {k: str(v) for k, v in files.items()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _report(metrics, "HMC" if hmc else job.guide, name, out)
    return metrics


def _report(metrics: dict, how: str, name: str, out: Path) -> None:
    """The run's scores, the HMC mixing check, and where the files are."""
    shown = {k: round(v, 4) for k, v in metrics.items() if k.startswith(("test_", "cover", "ece"))}
    print(f"BayesianMLP ({how}) on {name}: {shown}, {metrics['seconds']:.1f} s training")
    if how == "HMC":
        median, worst = metrics["rhat_function_median"], metrics["rhat_function_max"]
        print(f"R-hat of the network's output at the training inputs: {median:.3f} (median), "
              f"{worst:.3f} (max)")  # fmt: skip
    written = ", ".join(sorted(Path(v).name for v in metrics["files"].values()))
    print(f"wrote {out}/: metrics.json, {written}, diagnostics/")


def _split(x: torch.Tensor, y: torch.Tensor, name: str, seed: int):
    """``(x_train, y_train, x_test, y_test)``: a random ``TEST_FRACTION`` held out (the toy's
    test set is a fresh draw covering the gap)."""
    if name == "toy":
        return (x, y, *toy_gap(200, seed=1))
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(len(x) * TEST_FRACTION))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


def _checked_task(task: str, y: torch.Tensor, name: str) -> str:
    """Refuse a classification the targets cannot be: non-integer values, fewer than two
    classes, or more classes than a classifier of tabular data plausibly has."""
    if task != "classification":
        return task
    if y.is_floating_point() and not torch.equal(y, y.round()):
        raise ValueError(
            f"--task classification: the targets of {name} are not whole numbers (e.g. "
            f"{y[~torch.eq(y, y.round())][0].item():.4g}); use --task regression"
        )
    classes = torch.unique(y).numel()
    if classes < 2 or y.min() < 0 or int(y.max()) + 1 > MAX_CLASSES:
        raise ValueError(
            f"--task classification: the targets of {name} take {classes} distinct values in "
            f"[{y.min().item():.0f}, {y.max().item():.0f}]; a classifier needs labels 0..K-1 "
            f"with 2 <= K <= {MAX_CLASSES}; use --task regression for a continuous target"
        )
    return task


RHAT_NOTE = (
    "weight-space R-hat and ESS are meaningless for a network (hidden units can swap between "
    "chains); the R-hat of the network's outputs is rhat_function_* in metrics.json"
)


def _diagnostics(bnn: BayesianMLP, xtr, ytr, out: Path) -> dict:
    """DataTree of the last layer's weights with PPC and pointwise log-likelihood: the HMC
    chains, or draws of the guide, its weights sampled jointly (mean-field draws) so that each
    draw is one network. Prints the short summary of :func:`diagnose`."""
    if bnn.hmc_result is not None:
        dt = bnn.hmc_datatree(xtr, ytr)
        dt.attrs["rhat_note"] = RHAT_NOTE
    else:
        xs, ys = bnn.transform(xtr, ytr)
        kind, bnn.guide_kind = bnn.guide_kind, "meanfield"
        try:
            last = len(bnn.sizes) - 2
            dt = to_datatree(bnn.model, bnn.guide, xs, ys, num_samples=200,
                             var_names=[f"layer{last}.weight", f"layer{last}.bias"])  # fmt: skip
        finally:
            bnn.guide_kind = kind
    units = "standardized units" if bnn.task == "regression" else "class"
    dt.observed_data["y"].attrs["units"] = units
    dt.posterior_predictive["y"].attrs["units"] = units
    report = diagnose(dt, out)
    print(report["text"])
    loo = report["loo"]
    return {
        "summary": report["text"],
        "vi_khat": report["vi_khat"],
        "vi_khat_reading": report["vi_khat_reading"],
        "loo_elpd": float(loo.elpd),
        "loo_se": float(loo.se),
        "loo_khat_above_0.7": int((np.asarray(loo.pareto_k) > 0.7).sum()),
        "files": report["files"],
    }


def _bands(bnn, x, y, path):
    plt = pyplot()
    grid = torch.linspace(-5, 5, 300)[:, None]
    p = bnn.predict(grid, num_samples=300)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    g = grid[:, 0].numpy()
    ax.fill_between(g, p["quantiles"][0].numpy(), p["quantiles"][2].numpy(), alpha=0.3,
                    label="90% predictive interval")  # fmt: skip
    ax.plot(g, p["mean"].numpy(), label="predictive mean")
    ax.plot(g, (torch.sin(2 * grid[:, 0]) + grid[:, 0] / 2).numpy(), "k--", lw=1, label="truth")
    ax.scatter(x[:, 0].numpy(), y.numpy(), s=8, c="k", alpha=0.6, label="training data")
    ax.axvspan(-1, 1, color="grey", alpha=0.1)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    gap, near = (g > -1) & (g < 1), ((g > 1) & (g < 3)) | ((g > -3) & (g < -1))
    ratio = (p["std"][torch.as_tensor(gap)].mean() / p["std"][torch.as_tensor(near)].mean()).item()
    ax.set_title(f"BNN posterior predictive: std in the gap / near the data = {ratio:.2f}")
    ax.legend(fontsize=8, loc="upper left")
    return save_figure(fig, path)


def _calibration(bnn, x, y, path):
    """Observed coverage of central predictive intervals against their nominal level."""
    plt = pyplot()
    levels = [0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    qs = sorted(
        {round((1 - lv) / 2, 4) for lv in levels} | {round((1 + lv) / 2, 4) for lv in levels}
    )
    p = bnn.predict(x, num_samples=400, quantiles=qs)
    observed = []
    for lv in levels:
        lo, hi = qs.index(round((1 - lv) / 2, 4)), qs.index(round((1 + lv) / 2, 4))
        observed.append(interval_coverage(y, p["quantiles"][lo], p["quantiles"][hi]))
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    ax.plot(levels, observed, "o-", label="BNN")
    ax.set_xlabel("nominal coverage of the central interval")
    ax.set_ylabel("observed coverage (test)")
    ax.set_title(f"calibration, {len(y)} test points (SE about {math.sqrt(0.25 / len(y)):.2f})")
    ax.legend()
    return save_figure(fig, path)


def _reliability(probs, labels, path, bins: int = 10):
    plt = pyplot()
    conf, pred = probs.max(-1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    xs, ys = [], []
    for lo, hi in itertools.pairwise(edges.tolist()):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            xs.append(conf[inside].mean().item())
            ys.append(correct[inside].mean().item())
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    ax.plot(xs, ys, "o-", label="BNN")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy (test)")
    ax.set_title("reliability diagram")
    ax.legend()
    return save_figure(fig, path)
