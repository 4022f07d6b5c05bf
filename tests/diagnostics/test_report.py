"""``diagnose`` read at a glance: forest plots of at most 30 rows with chains pooled, R-hat and
ESS only where chains compare, a PPC for the kind of data, a labelled k-hat figure, a short
printed summary, and every figure under 2,000 px a side."""

import warnings

import arviz as az
import numpy as np
import pytest
from PIL import Image

from pyro_reparam.diagnostics import MAX_PIXELS, diagnose, save_figure, saved_labels
from pyro_reparam.diagnostics.figures import (
    MAX_ROWS,
    khat_figure,
    posterior_figure,
    ppc_figure,
)
from pyro_reparam.plotting import pyplot

RNG = np.random.default_rng(0)
N = 60


def _tree(chains, draws, *, hidden=50, outputs=10, classes=None, variational=True):
    """A network-like DataTree: last-layer weights ``(outputs, hidden)`` and biases, a
    log-likelihood and a PPC of ``N`` observations (class labels when ``classes``)."""
    post = {
        "layer1.weight": RNG.normal(size=(chains, draws, outputs, hidden)),
        "layer1.bias": RNG.normal(size=(chains, draws, outputs)) * 3,
    }
    if classes:
        obs = RNG.integers(0, classes, N)
        pred = RNG.integers(0, classes, (chains, draws, N))
    else:
        obs, pred = RNG.normal(size=N), RNG.normal(size=(chains, draws, N))
    data = {
        "posterior": post,
        "log_likelihood": {"y": -0.5 * RNG.normal(size=(chains, draws, N)) ** 2 - 1},
        "posterior_predictive": {"y": pred},
        "observed_data": {"y": obs},
    }
    if variational:
        data["sample_stats"] = {"log_weight": RNG.normal(size=(chains, draws))}
    dt = az.from_dict(data, dims={"y": ["data"]})
    if variational:
        dt.attrs["vi_khat"] = [0.9] * chains if chains > 1 else 0.9
    return dt


def _ytick_rows(fig) -> int:
    return sum(len(ax.get_yticklabels()) for ax in fig.get_axes())


def _labelled(fig) -> bool:
    return all(ax.get_title() and ax.get_xlabel() and ax.get_ylabel() for ax in fig.get_axes())


def test_a_network_posterior_fits_in_30_rows_with_chains_pooled(tmp_path):
    dt = _tree(16, 50, variational=False)  # 510 scalars, 16 MCMC chains
    fig = posterior_figure(dt)
    assert _ytick_rows(fig) <= MAX_ROWS and _labelled(fig)
    forest = fig.axes[1]  # one median marker per row, not one per chain
    assert len(forest.get_lines()[0].get_xdata()) == len(forest.get_yticklabels()) == 28
    assert "510 scalars in 2 sites" in fig.get_suptitle()
    path = save_figure(fig, tmp_path / "posterior.png")
    assert max(Image.open(path).size) <= MAX_PIXELS


def test_few_scalars_get_one_row_each():
    dt = _tree(1, 200, hidden=3, outputs=2)  # 8 scalars
    fig = posterior_figure(dt)
    assert _ytick_rows(fig) == 8 and _labelled(fig)
    assert fig.axes[0].get_yticklabels()[0].get_text() == "layer1.weight[0, 0]"


def test_a_single_vi_fit_drops_rhat_and_ess_and_says_why():
    report = diagnose(_tree(1, 200))
    for table in (report["summary"], report["table"], report["sites"]):
        assert not {"r_hat", "ess_bulk", "ess_tail", "max r_hat"} & set(table.columns)
    assert "R-hat and ESS left out: one VI fit is a single chain" in report["text"]
    assert len(report["summary"]) == 2  # 510 scalars: one row per site is what gets printed
    assert len(report["table"]) == 510


def test_restarts_keep_rhat_and_a_network_note_drops_it():
    restarts = diagnose(_tree(4, 100, hidden=10))
    assert "r_hat" in restarts["table"].columns and "max r_hat" in restarts["sites"].columns
    assert "R-hat: " in restarts["text"] and "left out" not in restarts["text"]
    dt = _tree(16, 50, hidden=10, variational=False)
    dt.attrs["rhat_note"] = "hidden units can swap between chains"
    mcmc = diagnose(dt)
    assert "r_hat" not in mcmc["table"].columns
    assert "R-hat and ESS left out: hidden units can swap" in mcmc["text"]


def test_the_printed_summary_is_short_and_names_counts():
    text = diagnose(_tree(1, 200))["text"]
    assert len(text.splitlines()) <= 12
    assert text.startswith("510 scalars in 2 sites; 1 VI fit of 200 draws")
    assert "PSIS-LOO: elpd" in text and "observations with k-hat > 0.7" in text


def test_high_loo_khat_is_said_once_in_the_text_not_warned_by_arviz_too():
    dt = _tree(1, 200)
    ll = dt.log_likelihood["y"].values  # a view: heavy-tailed weights for 5 observations
    ll[..., :5] = RNG.standard_cauchy(size=ll[..., :5].shape) * 50
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        text = diagnose(dt)["text"]
    bad = int(text.split("; ")[-1].split(" of ")[0])
    assert bad >= 1 and "observations with k-hat > 0.7" in text


def test_ppc_is_class_frequencies_for_labels_and_a_density_otherwise():
    dt = _tree(1, 100, classes=10)
    fig = ppc_figure(dt)
    (ax,) = fig.axes
    assert ax.get_ylabel() == "fraction of observations" and len(ax.patches) == 10
    assert _labelled(fig)
    dt = _tree(1, 100)
    dt.observed_data["y"].attrs["units"] = "mmol/L"
    (ax,) = ppc_figure(dt).axes
    assert ax.get_ylabel() == "density" and ax.get_xlabel() == "y (mmol/L)"
    assert "densities" in ax.get_title()


def test_khat_figure_has_title_labels_and_both_thresholds():
    k = np.r_[RNG.uniform(-0.2, 0.4, 50), 0.6, 0.8, 1.1]
    fig = khat_figure(k, vi_khat=[0.3])
    (ax,) = fig.axes
    assert _labelled(fig) and "2 of 53 observations above 0.7" in ax.get_title()
    levels = {line.get_ydata()[0] for line in ax.get_lines()}
    assert levels == {0.5, 0.7}


def test_save_figure_caps_the_pixels_and_records_the_labels(tmp_path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(40, 12))
    ax.set(title="wide", xlabel="x", ylabel="y")
    fig.suptitle("a figure far too wide")
    path = save_figure(fig, tmp_path / "wide.png", dpi=150)
    assert max(Image.open(path).size) <= MAX_PIXELS
    assert saved_labels(path) == {
        "title": "a figure far too wide",
        "axes": [{"title": "wide", "xlabel": "x", "ylabel": "y"}],
    }


@pytest.mark.parametrize("classes", [None, 3])
def test_diagnose_writes_every_file_under_the_size_limit(tmp_path, classes):
    report = diagnose(_tree(2, 100, hidden=10, classes=classes), tmp_path)
    assert {"summary", "vi_khat", "vi_khat_reading", "num_chains", "loo", "files"} <= set(report)
    for name in ("posterior.png", "ppc.png", "khat.png", "summary.csv", "sites.csv"):
        assert name in report["files"]
    for png in tmp_path.glob("*.png"):
        assert max(Image.open(png).size) <= MAX_PIXELS, png
        labels = saved_labels(png)["axes"]
        assert labels and all(a["title"] and a["xlabel"] and a["ylabel"] for a in labels), png
