"""VAE and Autoencoder: ELBO choices, methods, the CLI job's outputs."""

import json

import pyro
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

import pyro_reparam as pr
from pyro_reparam.apps.cli import main
from pyro_reparam.estimators import DReG_ELBO
from pyro_reparam.models import VAE, Autoencoder


def _x(n=20):
    return torch.rand(n, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("kwargs", "elbo_type"),
    [
        ({}, TraceMeanField_ELBO),
        ({"kl": "mc"}, Trace_ELBO),
        ({"iwae_particles": 4}, DReG_ELBO),
        ({"iwae_particles": 4, "iwae_gradient": "plain"}, RenyiELBO),
    ],
)
def test_elbo_choice_routes_pathwise_and_trains(kwargs, elbo_type):
    vae = VAE(64, 3, hidden=(16,), **kwargs)
    assert isinstance(vae.elbo(), elbo_type)
    plan = pr.route(vae.model, vae.guide, _x())
    assert plan["z"].estimator == "pathwise"
    h = pr.fit(vae.model, vae.guide, _x(), elbo=vae.elbo(), epochs=2, batch_size=10,
               progress=False)  # fmt: skip
    assert len(h.train_elbo) == 2


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli", "gaussian"])
@pytest.mark.parametrize("conv", [False, True])
def test_methods_shapes(likelihood, conv):
    x = (_x() > 0.5).float() if likelihood == "bernoulli" else _x()
    vae = VAE(64, 2, hidden=(16,), likelihood=likelihood, conv=conv, image_shape=(8, 8))
    assert vae.encode(x).shape == (20, 2)
    for out in (vae.reconstruct(x), vae.sample(5), vae.interpolate(x[0], x[1], 7)):
        assert out.shape[-1] == 64 and ((out >= 0) & (out <= 1)).all()
    assert vae.log_likelihood(x, num_samples=7).shape == (20,)
    pyro.poutine.trace(vae.model).get_trace(x)  # valid under Pyro's validation


def test_importance_sampled_log_likelihood_is_a_tighter_bound():
    """log p(x) >= E[IWAE_K] >= ELBO: the K = 1 estimate averages to the ELBO."""
    pyro.set_rng_seed(0)
    x = _x(8)
    vae = VAE(64, 2, hidden=(16,))
    elbo_1 = torch.stack([vae.log_likelihood(x, num_samples=1) for _ in range(400)]).mean(0)
    iw = vae.log_likelihood(x, num_samples=400)
    assert (iw > elbo_1).all()


def test_conv_needs_a_divisible_shape_and_options_are_checked():
    with pytest.raises(ValueError, match="divisible by 4"):
        VAE(64, 2, conv=True, image_shape=(6, 6))
    with pytest.raises(ValueError, match="kl must be one of"):
        VAE(64, 2, kl="exact")
    with pytest.raises(ValueError, match="likelihood must be one of"):
        VAE(64, 2, likelihood="poisson")


def test_autoencoder_learns():
    ae = Autoencoder(64, 2, hidden=(16,))
    losses = ae.fit(_x(), epochs=30, batch_size=10)
    assert losses[-1] < losses[0]


def test_cli_train_vae_writes_every_output(tmp_path, capsys):
    main(["train", "vae", "--epochs", "2", "--out", str(tmp_path), "--quiet",
          "--iw-samples", "5", "--hidden", "16"])  # fmt: skip
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["test_elbo"]) == 2 and metrics["latent_dim"] == 2
    assert 0 <= metrics["vi_khat_per_datapoint"]["fraction_above_0.7"] <= 1
    for name in ("elbo", "reconstructions", "samples", "interpolation", "latent_space", "khat"):
        assert (tmp_path / f"{name}.png").stat().st_size > 2000, name
    assert (tmp_path / "checkpoint.pt").exists()
    assert "wrote" in capsys.readouterr().out


def test_cli_train_dvae(tmp_path):
    main(["train", "dvae", "--epochs", "1", "--out", str(tmp_path), "--quiet", "--iw-samples",
          "5", "--num-latents", "8", "--hidden", "16"])  # fmt: skip
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "score" in metrics["routing"] and metrics["kl_per_image"] >= 0


def test_cli_rejects_bad_flags(capsys):
    with pytest.raises(SystemExit):
        main(["train", "vae", "--epochs", "0"])
    assert "must be a positive integer" in capsys.readouterr().err
    assert main(["train", "vae", "--data", "missing.npz", "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("pyro-reparam: error: load_npz: no file at")


def test_a_wrong_width_is_one_clear_error():
    vae = VAE(64, 2)
    with pytest.raises(ValueError, match=r"x has shape \(5, 10\), but this model was built for"):
        vae.guide(torch.rand(5, 10))
    with pytest.raises(ValueError, match="rows of 64 features"):
        vae.model(torch.rand(5, 10))
