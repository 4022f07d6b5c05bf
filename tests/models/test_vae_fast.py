"""The VAE's fast ELBOs equal Pyro's traced ELBOs draw for draw, and fall back to them."""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

from pyro_reparam.estimators import DReG_ELBO
from pyro_reparam.models import VAE, Autoencoder
from pyro_reparam.models.likelihoods import pixel_distribution
from pyro_reparam.models.vae_elbo import (
    VAEIWAE_ELBO,
    VAEDReG_ELBO,
    VAEMeanFieldELBO,
    VAETraceELBO,
    in_support,
)
from pyro_reparam.train import fit

LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "gaussian")
# (VAE options, VAE.elbo num_particles, the traced ELBO it must equal)
ESTIMATORS = {
    "analytic": ({"kl": "analytic"}, 1, TraceMeanField_ELBO),
    "analytic-K3": ({"kl": "analytic"}, 3, TraceMeanField_ELBO),
    "mc": ({"kl": "mc"}, 1, Trace_ELBO),
    "mc-K3": ({"kl": "mc"}, 3, Trace_ELBO),
    "iwae-K3": ({"iwae_particles": 3, "iwae_gradient": "plain"}, 1, RenyiELBO),
    "dreg-K3": ({"iwae_particles": 3, "iwae_gradient": "dreg"}, 1, DReG_ELBO),
}


def _data(likelihood, n=10):
    x = torch.rand(n, 64, generator=torch.Generator().manual_seed(1))
    return (x > 0.5).float() if likelihood == "bernoulli" else x


def _vae(likelihood="bernoulli", conv=False, **kwargs):
    torch.manual_seed(0)
    vae = VAE(64, 3, hidden=(16,), likelihood=likelihood, conv=conv, image_shape=(8, 8), **kwargs)
    with torch.no_grad():  # a non-default noise scale, so that its gradient means something
        vae.log_sigma.fill_(-0.5)
    return vae


@pytest.fixture
def spy(monkeypatch):
    """Counts the fast path's computations (per ELBO class)."""
    calls = []
    for cls in (VAEMeanFieldELBO, VAETraceELBO, VAEIWAE_ELBO, VAEDReG_ELBO):
        fn = cls.estimate

        def counted(*args, fn=fn):
            calls.append(fn.__name__)
            return fn(*args)

        monkeypatch.setattr(cls, "estimate", staticmethod(counted))
    return calls


def _step(vae, elbo, x, seed, model=None, guide=None, how="loss_and_grads"):
    """``(loss, {parameter: gradient}, registered names)`` of one call under ``seed``."""
    pyro.clear_param_store()
    vae.zero_grad(set_to_none=True)
    pyro.set_rng_seed(seed)
    with poutine.trace(param_only=True) as tape:
        model, guide = model or vae.model, guide or vae.guide
        if how == "differentiable_loss":
            loss = elbo.differentiable_loss(model, guide, x)
            loss.backward()
            loss = loss.item()
        else:
            loss = getattr(elbo, how)(model, guide, x)
    grads = {n: p.grad.clone() for n, p in vae.named_parameters() if p.grad is not None}
    return loss, grads, set(tape.trace.nodes)


def _assert_same(fast, traced):
    (lf, gf, nf), (lt, gt, nt) = fast, traced
    assert nf == nt
    assert lf == pytest.approx(lt, rel=1e-5, abs=1e-4)
    assert gf.keys() == gt.keys()
    for name in gt:
        torch.testing.assert_close(gf[name], gt[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
@pytest.mark.parametrize("conv", [False, True], ids=["mlp", "conv"])
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_fast_equals_traced_draw_for_draw(likelihood, conv, estimator, spy):
    options, k, traced_cls = ESTIMATORS[estimator]
    vae, x = _vae(likelihood, conv, **options), _data(likelihood)
    fast, traced = vae.elbo(k), vae.elbo(k, traced=True)
    assert isinstance(fast, traced_cls) and type(traced) is traced_cls
    for how in ("loss_and_grads", "differentiable_loss", "loss"):
        if how == "differentiable_loss" and traced_cls is RenyiELBO:
            continue  # Pyro's RenyiELBO has none: compared below against loss_and_grads
        _assert_same(_step(vae, fast, x, 7, how=how), _step(vae, traced, x, 7, how=how))
    n_calls = len(spy)
    assert n_calls == (2 if traced_cls is RenyiELBO else 3)
    if traced_cls is RenyiELBO:
        fast_dl = _step(vae, fast, x, 7, how="differentiable_loss")
        _assert_same(fast_dl, _step(vae, traced, x, 7))


def test_gradients_are_not_all_zero_or_alike():
    """The comparison has something to compare: every parameter gets a gradient, and DReG's
    encoder gradient differs from the plain IWAE one while the decoder's is the same."""
    x = _data("gaussian")
    vae = _vae("gaussian", iwae_particles=3, iwae_gradient="plain")
    plain = _step(vae, vae.elbo(), x, 3)
    vae = _vae("gaussian", iwae_particles=3, iwae_gradient="dreg")
    dreg = _step(vae, vae.elbo(), x, 3)
    assert set(dreg[1]) == {n for n, _ in vae.named_parameters()}
    assert all(g.abs().sum() > 0 for g in dreg[1].values())
    assert plain[0] == pytest.approx(dreg[0])
    for name in dreg[1]:
        same = torch.allclose(plain[1][name], dreg[1][name], rtol=1e-4, atol=1e-6)
        assert same == (not name.startswith("encoder")), name


def test_svi_and_fit_train_as_the_traced_elbo():
    """Several SVI steps (pyro.optim.Adam) and a fit run: the same parameters and history."""
    x = _data("bernoulli", 40)

    def train(traced):
        vae = _vae("bernoulli", kl="analytic")
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), vae.elbo(traced=traced))
        losses = [svi.step(x[i : i + 10]) for i in range(0, 40, 10)]
        return losses, [p.detach().clone() for p in vae.parameters()]

    (lf, pf), (lt, pt) = train(False), train(True)
    assert lf == pytest.approx(lt, rel=1e-5)
    for a, b in zip(pf, pt, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

    def run(traced):
        vae = _vae("gaussian", kl="mc")
        pyro.clear_param_store()
        h = fit(vae.model, vae.guide, x, elbo=vae.elbo(2, traced=traced), epochs=2,
                batch_size=16, val_data=x[:8], progress=False)  # fmt: skip
        return h.train_elbo + h.val_elbo, vae.log_sigma.detach().clone()

    (hf, sf), (ht, st) = run(False), run(True)
    assert hf == pytest.approx(ht, rel=1e-5)
    torch.testing.assert_close(sf, st)
    assert not torch.equal(sf, torch.full_like(sf, -0.5))  # log_sigma was registered and trained


@pytest.mark.parametrize("estimator", ["analytic", "mc", "iwae-K3", "dreg-K3"])
def test_fallback_under_condition_and_other_pairs(estimator, spy):
    options, k, _ = ESTIMATORS[estimator]
    vae, x = _vae("continuous_bernoulli", **options), _data("continuous_bernoulli")
    fast, traced = vae.elbo(k), vae.elbo(k, traced=True)
    # other observed pixels than the x the step is called with: only a traced run sees them
    conditioned = poutine.condition(data={"x": x.flip(0)})

    def under_condition(elbo):
        with conditioned:
            return _step(vae, elbo, x, 5)

    _assert_same(under_condition(fast), under_condition(traced))
    assert under_condition(traced)[0] != pytest.approx(_step(vae, traced, x, 5)[0])
    # the user's wrapped model, and a VAE subclass that writes its prior differently
    wrapped = poutine.scale(vae.model, scale=0.5)
    _assert_same(_step(vae, fast, x, 5, model=wrapped), _step(vae, traced, x, 5, model=wrapped))
    other = _vae("continuous_bernoulli", **options)
    _assert_same(_step(vae, fast, x, 5, model=other.model),
                 _step(vae, traced, x, 5, model=other.model))  # fmt: skip

    class Wider(VAE):
        def prior(self, batch_shape=()):
            return super().prior(batch_shape)

    torch.manual_seed(0)
    wider = Wider(64, 3, hidden=(16,), likelihood="continuous_bernoulli", **options)
    f, t = wider.elbo(k), wider.elbo(k, traced=True)
    _assert_same(_step(wider, f, x, 5), _step(wider, t, x, 5))
    assert spy == []


def test_validation_speaks_through_the_traced_elbo(spy):
    """Data outside the likelihood's support: Pyro's own error under validation; with
    validation off, the fast path (as Pyro, which then computes a loss too)."""
    vae, x = _vae("bernoulli"), _data("continuous_bernoulli")
    elbo = vae.elbo()
    with pytest.raises(ValueError, match="support"):
        elbo.loss_and_grads(vae.model, vae.guide, x)
    assert spy == ["analytic"]  # computed, its support check read with the loss, handed on
    with pyro.validation_enabled(False):
        fast = _step(vae, elbo, x, 1)
        traced = _step(vae, vae.elbo(traced=True), x, 1)
    assert spy == ["analytic"] * 2
    _assert_same(fast, traced)
    with pytest.raises(ValueError, match="rows of 64"):
        elbo.loss(vae.model, vae.guide, x[:, :10])


@pytest.mark.parametrize(
    ("likelihood", "pixel", "refused"),
    [("bernoulli", v, True) for v in (0.5, 1 - 2**-24, 2**-30, 2.0, -1.0, float("nan"))]
    + [("bernoulli", v, False) for v in (0.0, -0.0, 1.0)]
    + [("continuous_bernoulli", v, True) for v in (1 + 2**-23, -(2**-30), float("nan"))]
    + [("continuous_bernoulli", v, False) for v in (0.0, 1.0, 0.3)],
)
def test_support_check_is_pyros(likelihood, pixel, refused):
    """One pixel decides: the fast check refuses exactly what Pyro's validation refuses."""
    vae, x = _vae(likelihood), _data(likelihood)
    x[3, 17] = pixel
    traced = vae.elbo(traced=True)
    pyro_refuses = False
    try:
        traced.loss(vae.model, vae.guide, x)
    except ValueError:
        pyro_refuses = True
    assert pyro_refuses == refused
    assert bool(in_support(likelihood, x)) == (not refused)


def test_nonfinite_loss_is_diagnosed_by_pyro(spy):
    vae, x = _vae("gaussian"), _data("gaussian")
    with torch.no_grad():
        vae.encoder[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="loc"):
        vae.elbo().loss_and_grads(vae.model, vae.guide, x)
    assert spy == ["analytic"]  # tried, then handed to the traced ELBO


def test_options_are_checked():
    with pytest.raises(ValueError, match="iwae_gradient must be one of"):
        VAE(64, 2, iwae_particles=3, iwae_gradient="vimco")
    with pytest.raises(ValueError, match="num_particles must be an integer"):
        VAE(64, 2).elbo(0)
    with pytest.raises(TypeError, match="vae must be a pyro_reparam VAE"):
        VAEMeanFieldELBO(object())


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_autoencoder_loss_is_the_pixel_likelihood(likelihood):
    torch.manual_seed(0)
    ae, x = Autoencoder(64, 3, hidden=(16,), likelihood=likelihood), _data(likelihood)
    out = ae.decoder(ae.encode(x))
    expected = -pixel_distribution(likelihood, out, ae.log_sigma).log_prob(x).sum()
    torch.testing.assert_close(ae.loss(x), expected)
    if likelihood != "gaussian":
        bad = x.clone()
        bad[0, 0] = 1.5
        with pytest.raises(ValueError, match=r"likelihood=.* needs x"):
            ae.loss(bad)
        with pytest.raises(ValueError, match=r"Autoencoder\.fit: likelihood"):
            ae.fit(bad, epochs=1)
