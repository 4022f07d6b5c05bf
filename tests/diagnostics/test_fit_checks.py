"""The warnings for silent failures, each with a case that warns and one that does not:
posterior collapse, minibatches that leave global latents unscaled, an ELBO that stalled."""

import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

import pyro_reparam as pr
from pyro_reparam.diagnostics import check_collapse, check_data_scaling, check_plateau
from pyro_reparam.models import VAE, DiscreteVAE

N, B = 200, 20


def _quiet(check, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        return check(*args, **kwargs)


def _dvae_with_encoder_logits(scale: float) -> DiscreteVAE:
    """A DiscreteVAE whose encoder's last layer is ``scale`` times its init (0: q = p)."""
    dvae = DiscreteVAE(16, num_latents=6, hidden=(8,))
    last = dvae.encoder[-1]
    with torch.no_grad():
        last.weight.mul_(scale)
        last.bias.mul_(scale)
    return dvae


def test_collapse_warns_with_the_count_and_the_fix():
    x = torch.bernoulli(torch.full((32, 16), 0.5), generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match=r"DiscreteVAE: posterior collapse: 6 of 6 latents of "
                      r"site 'z' carry KL\(q \|\| p\) < 0.01 nats.*same output.*Fix: train "
                      r"longer"):  # fmt: skip
        assert check_collapse(_dvae_with_encoder_logits(0.0), x) == 6
    assert _quiet(check_collapse, _dvae_with_encoder_logits(30.0), x) == 0


def test_collapse_from_a_kl_table_counts_the_unused_latents():
    kl = torch.tensor([[0.5, 0.001, 2.0], [0.7, 0.003, 1.0]])  # (B, L): latent 1 is unused
    with pytest.warns(UserWarning, match=r"1 of 3 latents .* the decoder ignores them"):
        assert check_collapse(kl) == 1
    assert pr.diagnostics.check_collapse(np.array([0.5, 0.2]), threshold=0.1) == 0
    vae = VAE(16, 3, hidden=(8,))
    assert vae.kl_per_latent(torch.rand(5, 16)).shape == (5, 3)
    with pytest.raises(ValueError, match="pass the batch x"):
        check_collapse(vae)


def _global_model(scaling):
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        if scaling == "plate":
            with pyro.plate("data", N, subsample_size=len(x)):
                pyro.sample("x", dist.Normal(mu, 1.0), obs=x)
            return
        with pyro.plate("data", len(x)), poutine.scale(scale=N / len(x) if scaling else 1.0):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    return model


def _global_guide(x):
    pyro.sample("mu", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))


def test_unscaled_minibatches_with_a_global_latent_warn():
    x = torch.randn(B)
    with pytest.warns(UserWarning, match=r"minibatches of 20 of 200 data: observed site 'x' is "
                      r"scaled by 1, not N / B = 10, while the global latent site\(s\) 'mu'.*"
                      r"pyro.plate\('data', 200, subsample_size=20\)"):  # fmt: skip
        assert check_data_scaling(_global_model(None), _global_guide, (x,), N) == ["x"]
    state = torch.get_rng_state()
    for scaling in ("scale", "plate"):
        assert _quiet(check_data_scaling, _global_model(scaling), _global_guide, (x,), N) == []
    assert torch.equal(torch.get_rng_state(), state)  # the check puts the random state back
    assert (
        _quiet(check_data_scaling, _global_model(None), _global_guide, (torch.randn(N),), N) == []
    )


def test_local_latents_need_no_scaling():
    vae = VAE(16, 2, hidden=(8,))
    assert _quiet(check_data_scaling, vae.model, vae.guide, (torch.rand(B, 16),), N) == []


def _history(elbo):
    return pr.History(records=[{"epoch": i + 1, "train_elbo": float(v), "val_elbo": None}
                               for i, v in enumerate(elbo)])  # fmt: skip


def test_an_elbo_that_stalled_early_warns():
    rng = np.random.default_rng(0)
    epochs = np.arange(40)
    stalled = -10 + 5 * (1 - np.exp(-epochs / 2)) + 0.05 * rng.standard_normal(40)
    with pytest.warns(UserWarning, match=r"stopped improving by epoch 20 of 40.*raise the "
                      r"learning rate"):  # fmt: skip
        assert check_plateau(_history(stalled))
    with pytest.warns(UserWarning, match="stopped improving by epoch 6 of 12"):
        assert check_plateau(np.full(12, -3.0))  # nothing trains at all
    improving = -10 + 0.1 * epochs + 0.05 * rng.standard_normal(40)
    assert _quiet(check_plateau, _history(improving)) is False
    assert _quiet(check_plateau, stalled[:5]) is False  # too short to tell
