"""Every PNG the command line writes is at most 2,000 px on each side, and the diagnostics
figures carry a title and axis labels (read back from the PNG's metadata)."""

import pytest
from PIL import Image

from pyro_reparam.apps.cli import main
from pyro_reparam.diagnostics import MAX_PIXELS, saved_labels

RUNS = {
    "bnn": ["train", "bnn", "--data", "diabetes", "--epochs", "2", "--hidden", "8"],
    "digits": ["train", "bnn", "--data", "digits", "--epochs", "1", "--hidden", "8"],
    "dvae": ["train", "dvae", "--epochs", "1", "--num-latents", "4", "--iw-samples", "20"],
    "vae": ["train", "vae", "--epochs", "1", "--iw-samples", "20"],
}
DIAGNOSTICS = ("posterior.png", "ppc.png", "khat.png")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    for name, command in RUNS.items():
        assert main([*command, "--out", str(root / name), "--quiet"]) == 0, name
    assert main(["diagnose", str(root / "bnn")]) == 0
    return root


def test_every_png_is_at_most_2000_px_a_side(runs):
    pngs = sorted(runs.rglob("*.png"))
    assert len(pngs) >= 20  # 5 per BNN run (2 + 3 diagnostics), 5 or 7 per image run
    for png in pngs:
        with Image.open(png) as im:
            assert max(im.size) <= MAX_PIXELS, (png.relative_to(runs), im.size)


@pytest.mark.parametrize("run", ["bnn", "digits"])
def test_diagnostics_figures_have_titles_and_axis_labels(runs, run):
    for name in DIAGNOSTICS:
        axes = saved_labels(runs / run / "diagnostics" / name)["axes"]
        assert axes, (run, name)
        for ax in axes:
            assert ax["title"] and ax["xlabel"] and ax["ylabel"], (run, name, ax)


def test_the_ppc_suits_the_task(runs):
    (regression,) = saved_labels(runs / "bnn" / "diagnostics" / "ppc.png")["axes"]
    assert regression["ylabel"] == "density" and regression["xlabel"] == "y (standardized units)"
    (classes,) = saved_labels(runs / "digits" / "diagnostics" / "ppc.png")["axes"]
    assert classes["ylabel"] == "fraction of observations" and classes["xlabel"] == "y (class)"
