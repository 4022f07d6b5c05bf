"""A ready model's own pair routes to its direct ELBO (the plan says so), which trains exactly
as the traced plan does; any plan the direct ELBO does not compute stays traced."""

import pyro
import pytest
import torch

import pyro_reparam as pr
from pyro_reparam.models import VAE, DiscreteVAE
from pyro_reparam.routing.build import RoutedELBO

X = torch.rand(40, 16, generator=torch.Generator().manual_seed(0))
XB = (X > 0.5).float()


def _models():
    return {
        "vae analytic": (lambda: VAE(16, 2, hidden=(8,)), X),
        "vae mc": (lambda: VAE(16, 2, hidden=(8,), kl="mc"), X),
        "dvae loo": (lambda: DiscreteVAE(16, num_latents=4, hidden=(8,)), XB),
    }


def _history(make, x, direct: bool):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)  # the same initial weights
    net = make()
    plan = pr.route(net.model, net.guide, x[:10])
    elbo = plan.elbo(direct=direct)
    h = pr.fit(net.model, net.guide, x, elbo=elbo, epochs=3, batch_size=10, progress=False,
               log=lambda _m: None)  # fmt: skip
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
    return plan, elbo, h.train_elbo, params


@pytest.mark.parametrize("name", list(_models()))
def test_the_direct_elbo_trains_as_the_traced_plan(name):
    make, x = _models()[name]
    plan, direct, fast, p_fast = _history(make, x, direct=True)
    _, traced, slow, p_slow = _history(make, x, direct=False)
    assert not isinstance(direct, RoutedELBO) and isinstance(traced, RoutedELBO)
    assert "fast path: plan.elbo() is" in str(plan)
    assert fast == pytest.approx(slow, rel=1e-5, abs=1e-6)
    assert p_fast.keys() == p_slow.keys()
    for k in p_fast:
        torch.testing.assert_close(p_fast[k], p_slow[k], rtol=1e-4, atol=1e-5)


def test_fit_without_an_elbo_takes_the_direct_path_and_says_so():
    vae = VAE(16, 2, hidden=(8,))
    said = []
    h = pr.fit(vae.model, vae.guide, X, epochs=1, batch_size=20, progress=False, log=said.append)
    assert h.plan.direct is not None
    assert any("fast path" in m for m in said)


@pytest.mark.parametrize(
    ("make", "x", "options"),
    [
        (lambda: VAE(16, 2, hidden=(8,)), X, {"estimators": {"z": "score"}}),
        (lambda: VAE(16, 2, hidden=(8,), iwae_particles=3), X, {}),
        (lambda: DiscreteVAE(16, num_latents=4, hidden=(8,)), XB, {"baseline": "decaying"}),
        (lambda: DiscreteVAE(16, num_latents=4, hidden=(8,)), XB, {"num_particles": 1}),
        (lambda: DiscreteVAE(16, num_latents=4, hidden=(8,), estimator="relaxed"), XB, {}),
    ],
)
def test_a_plan_the_direct_elbo_does_not_compute_stays_traced(make, x, options):
    net = make()
    plan = pr.route(net.model, net.guide, x[:10], **options)
    assert plan.direct is None and "fast path" not in str(plan)
    assert isinstance(plan.elbo(), RoutedELBO)


def test_a_users_own_pair_and_a_pair_of_two_models_have_no_direct_path():
    a, b = VAE(16, 2, hidden=(8,)), VAE(16, 2, hidden=(8,), name="other")
    assert pr.route(a.model, b.guide, X[:10]).direct is None
    assert pr.route(lambda x: a.model(x), a.guide, X[:10]).direct is None


def test_jit_compiles_the_traced_plan_and_trains_as_the_direct_path():
    runs = {}
    for jit in (False, True):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        vae = VAE(16, 2, hidden=(8,))
        runs[jit] = pr.fit(vae.model, vae.guide, X, epochs=2, batch_size=20, progress=False,
                           jit=jit, log=lambda _m: None).train_elbo  # fmt: skip
    # tracing for the compiler draws its own noise, so the runs agree only statistically
    assert runs[True] == pytest.approx(runs[False], rel=0.03)
