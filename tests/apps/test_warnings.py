"""The image jobs warn about fits that fail silently (collapsed latents, a stalled ELBO) and
stay quiet about fits that do not."""

import json
import warnings

import pytest
import torch

from pyro_reparam.apps.cli import main
from pyro_reparam.models import DiscreteVAE

OURS = ("posterior collapse", "stopped improving", "minibatches of")


def _run(command, out) -> tuple[list[str], dict]:
    """Run ``command`` into ``out``; the messages of our warnings and the metrics."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*command, "--out", str(out), "--quiet", "--iw-samples", "20"]) == 0
    ours = [str(w.message) for w in caught if any(k in str(w.message) for k in OURS)]
    return ours, json.loads((out / "metrics.json").read_text())


DVAE = ["train", "dvae", "--epochs", "1", "--num-latents", "4"]


def test_the_dvae_job_is_quiet_when_its_latents_carry_information(tmp_path):
    ours, metrics = _run(DVAE, tmp_path / "dvae")
    assert ours == [] and metrics["collapsed_latents"] == 0


def test_the_dvae_job_warns_when_its_latents_collapse(tmp_path, monkeypatch):
    collapsed = lambda self, x: torch.full((len(x), self.num_latents), 1e-4)  # noqa: E731
    monkeypatch.setattr(DiscreteVAE, "kl_per_latent", collapsed)
    ours, metrics = _run(DVAE, tmp_path / "dvae")
    assert len(ours) == 1 and metrics["collapsed_latents"] == 4
    assert ours[0].startswith("DiscreteVAE: posterior collapse: 4 of 4 latents of site 'z'")


@pytest.mark.parametrize(("lr", "stalls"), [("1e-7", True), ("3e-3", False)])
def test_the_vae_job_warns_when_its_elbo_stalls(tmp_path, lr, stalls):
    command = ["train", "vae", "--epochs", "10", "--hidden", "32", "--lr", lr]
    ours, _ = _run(command, tmp_path / "vae")
    assert any("stopped improving by epoch 5 of 10" in m for m in ours) is stalls, ours
