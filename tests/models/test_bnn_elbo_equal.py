"""The direct BayesianMLP ELBO equals Pyro's traced one draw for draw under every estimator:
the same loss value and the same gradient of every parameter when both see the same noise.

Weight sampling draws in the guide's order, so one seed gives both the same draws (also in
tests/models/test_bnn.py). Local reparameterization and Flipout draw their noise inside the
layer op (``torch.randn_like``, ``torch.randint``) while the traced ELBO's guide draws weights
too; with those two functions fed from one fixed stream per evaluation, both ELBOs see the same
layer noise."""

import pyro
import pytest
import torch

from pyro_reparam.models import BayesianMLP


class FixedNoise:
    """``torch.randn_like`` / ``torch.randint`` from a generator reset for each evaluation."""

    def __init__(self, monkeypatch):
        self.randn_like, self.randint = torch.randn_like, torch.randint
        self.g = torch.Generator()
        monkeypatch.setattr(torch, "randn_like", self._randn_like)
        monkeypatch.setattr(torch, "randint", self._randint)

    def reset(self):
        self.g.manual_seed(7)

    def _randn_like(self, t, **kwargs):
        return torch.randn(t.shape, generator=self.g, dtype=t.dtype, device=t.device)

    def _randint(self, low, high, size, **kwargs):
        return self.randint(low, high, size, generator=self.g, **kwargs)


def _toy(n=24, outputs=1):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    y = torch.sin(x[:, :outputs]) + 0.1 * torch.randn(n, outputs, generator=g)
    return x, y.squeeze(-1) if outputs == 1 else y


@pytest.mark.parametrize("outputs", [1, 2])
@pytest.mark.parametrize("noise", ["heteroscedastic", "homoscedastic"])
@pytest.mark.parametrize("guide", ["meanfield", "local", "flipout"])
def test_direct_elbo_equals_the_traced_elbo_value_and_every_gradient(
    guide, noise, outputs, monkeypatch
):
    x, y = _toy(outputs=outputs)
    torch.manual_seed(0)
    bnn = BayesianMLP(3, outputs, (8, 6), guide=guide, noise=noise, init_scale=0.3)
    untrained = {"log_noise"} if noise == "heteroscedastic" else set()
    _assert_equal_elbos(bnn, x, y, FixedNoise(monkeypatch), untrained)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("guide", ["meanfield", "local"])
def test_direct_elbo_equals_the_traced_elbo_for_classification(guide, activation, monkeypatch):
    x, _ = _toy()
    y = torch.randint(0, 3, (x.shape[0],), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    bnn = BayesianMLP(3, 3, (8,), task="classification", guide=guide, activation=activation,
                      init_scale=0.3)  # fmt: skip
    _assert_equal_elbos(bnn, x, y, FixedNoise(monkeypatch), {"log_noise"})


def _assert_equal_elbos(bnn, x, y, fixed, untrained):
    """One ``loss_and_grads`` of each ELBO under the same noise: the same loss, and the same
    gradient of every parameter but ``untrained``."""
    results = []
    for elbo in (bnn.elbo(traced=True), bnn.elbo()):
        pyro.set_rng_seed(3)
        fixed.reset()
        bnn.zero_grad()
        loss = elbo.loss_and_grads(bnn.model, bnn.guide, x, y, num_data=240)
        grads = {n: p.grad.clone() for n, p in bnn.named_parameters() if p.grad is not None}
        results.append((loss, grads))
    (traced, g_traced), (direct, g_direct) = results
    assert direct == pytest.approx(traced, rel=1e-5)
    trained = {n for n, _ in bnn.named_parameters()} - untrained
    assert set(g_traced) == set(g_direct) == trained
    for name, grad in g_traced.items():
        torch.testing.assert_close(g_direct[name], grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("how", ["loss_and_grads", "loss", "differentiable_loss"])
def test_a_nan_target_raises_pyros_error_under_validation(how):
    """Pyro validates the observed value of site "y": the direct ELBO lets it speak, and
    without validation both ELBOs give the NaN loss."""
    x, y = _toy()
    y[3] = float("nan")
    torch.manual_seed(0)
    bnn = BayesianMLP(3, 1, (8,), noise="homoscedastic")
    for elbo in (bnn.elbo(traced=True), bnn.elbo()):
        pyro.clear_param_store()
        with pytest.raises(ValueError, match="site 'y'"):
            getattr(elbo, how)(bnn.model, bnn.guide, x, y)
        with pyro.validation_enabled(False), pytest.warns(UserWarning, match="Encountered NaN"):
            value = getattr(elbo, how)(bnn.model, bnn.guide, x, y)
        assert torch.isnan(torch.as_tensor(value))


def test_the_traced_fallback_keeps_num_data(monkeypatch):
    """A non-finite direct loss goes to the traced ELBO with the direct ELBO's ``num_data`` (the
    network's own model takes it), not unscaled; a call's own ``num_data`` wins."""
    from pyro_reparam.models.bnn import elbo as bnn_elbo

    seen = []

    class Recorder:
        def loss(self, model, guide, *args, **kwargs):
            seen.append(kwargs.get("num_data"))
            return 0.0

    monkeypatch.setattr(bnn_elbo, "traced_elbo", lambda *a, **k: Recorder())
    x, y = _toy()
    y[0] = float("inf")  # inside the reals (Pyro's support check passes): an inf loss
    bnn = BayesianMLP(3, 1, (8,), noise="homoscedastic")
    elbo = bnn.elbo(num_data=240)
    elbo.loss(bnn.model, bnn.guide, x, y)
    elbo.loss(bnn.model, bnn.guide, x, y, num_data=48)
    elbo.loss(lambda x, y: bnn.model(x, y, num_data=240), bnn.guide, x, y)  # fit's pair
    assert seen == [240, 48, None]
