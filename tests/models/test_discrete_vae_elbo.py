"""DiscreteVAEELBO: the routed leave-one-out score-function ELBO of a DiscreteVAE computed
directly equals the traced routed ELBO draw for draw (loss value and every gradient under one
seed), plugs into SVI and fit, and hands any other pair to the routed ELBO."""

import pyro
import pytest
import torch
from pyro.infer import SVI

import pyro_reparam as pr
from pyro_reparam.estimators import ScoreFunctionELBO
from pyro_reparam.models import DiscreteVAE
from pyro_reparam.models.discrete_vae_elbo import DiscreteVAEELBO

CASES = {
    "bernoulli": {},
    "categorical": {"latent": "categorical", "num_latents": 3, "num_categories": 4},
    "gaussian pixels": {"likelihood": "gaussian"},
}


def _data(n=6, d=16):
    g = torch.Generator().manual_seed(0)
    return (torch.rand(n, d, generator=g) > 0.5).float()


def _eval(elbo, dvae, x, seed, how):
    pyro.set_rng_seed(seed)
    dvae.zero_grad()
    if how == "loss_and_grads":
        loss = elbo.loss_and_grads(dvae.model, dvae.guide, x)
    else:
        out = elbo.differentiable_loss(dvae.model, dvae.guide, x)
        out.backward()
        loss = out.item()
    grads = {n: p.grad.clone() for n, p in dvae.named_parameters() if p.grad is not None}
    return loss, grads


@pytest.mark.parametrize("how", ["loss_and_grads", "differentiable_loss"])
@pytest.mark.parametrize("case", list(CASES))
def test_direct_equals_the_traced_routed_elbo_value_and_every_gradient(case, how):
    torch.manual_seed(0)
    dvae = DiscreteVAE(16, **{"num_latents": 5, "hidden": (12,), **CASES[case]})
    x = _data()
    routed = pr.route(dvae.model, dvae.guide, x).elbo(direct=False)
    assert isinstance(routed.inner, ScoreFunctionELBO) and routed.inner.baseline_for("z") in (
        "loo", "auto")  # fmt: skip
    direct = dvae.elbo()
    for seed in (1, 2):
        traced_loss, traced_grads = _eval(routed, dvae, x, seed, how)
        loss, grads = _eval(direct, dvae, x, seed, how)
        assert loss == pytest.approx(traced_loss, rel=1e-6, abs=1e-5)
        expected = {n for n, _ in dvae.named_parameters()}
        if case != "gaussian pixels":
            expected.discard("log_sigma")
        if case == "categorical":
            expected.discard("prior_logits")  # a uniform prior
        assert set(grads) == set(traced_grads) == expected
        for name, g in traced_grads.items():
            torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-6, msg=name)
    routed_loss = routed.loss(dvae.model, dvae.guide, x)
    assert isinstance(routed_loss, float) and isinstance(direct.loss(dvae.model, dvae.guide, x),
                                                         float)  # fmt: skip


def test_svi_and_fit_train_with_it_and_collect_every_parameter():
    torch.manual_seed(0)
    dvae = DiscreteVAE(16, num_latents=5, hidden=(12,))
    x = _data(32)
    svi = SVI(dvae.model, dvae.guide, pyro.optim.Adam({"lr": 1e-2}), dvae.elbo())
    with pyro.poutine.trace(param_only=True) as tape:
        svi.step(x)
    assert set(tape.trace.nodes) == set(pyro.get_param_store().keys())
    assert {"dvae.prior_logits", "dvae.encoder$$$0.weight", "dvae.decoder$$$2.bias"} <= set(
        tape.trace.nodes)  # fmt: skip
    pyro.clear_param_store()
    torch.manual_seed(0)
    dvae = DiscreteVAE(16, num_latents=5, hidden=(12,))
    h = pr.fit(dvae.model, dvae.guide, x, elbo=dvae.elbo(), epochs=3, batch_size=8,
               progress=False)  # fmt: skip
    assert len(h.train_elbo) == 3 and all(map(torch.isfinite, torch.tensor(h.train_elbo)))


def test_fit_with_it_is_fit_with_the_routed_elbo():
    """Same seed, same draws: the histories agree to float rounding."""
    x = _data(32)
    out = []
    for direct in (False, True):
        pyro.clear_param_store()
        torch.manual_seed(0)
        dvae = DiscreteVAE(16, num_latents=5, hidden=(12,))
        elbo = dvae.elbo() if direct else None
        h = pr.fit(dvae.model, dvae.guide, x, elbo=elbo, epochs=3, batch_size=8, progress=False,
                   log=lambda _m: None)  # fmt: skip
        out.append(h.train_elbo)
    assert out[1] == pytest.approx(out[0], rel=1e-5)


def test_other_pairs_and_estimators_get_the_routed_elbo():
    torch.manual_seed(0)
    dvae = DiscreteVAE(16, num_latents=5, hidden=(12,))
    other = DiscreteVAE(16, num_latents=5, hidden=(12,), estimator="relaxed", name="other")
    x = _data()
    elbo = dvae.elbo()
    loss = elbo.loss_and_grads(other.model, other.guide, x)
    assert isinstance(loss, float)
    (routed,) = elbo._traced.values()
    assert routed.plan.sites["z"].estimator == "relaxed"
    assert other.encoder[0].weight.grad is not None


def test_needs_two_particles():
    dvae = DiscreteVAE(16, num_latents=5, hidden=(12,))
    with pytest.raises(ValueError, match="num_particles >= 2"):
        DiscreteVAEELBO(dvae, num_particles=1)
