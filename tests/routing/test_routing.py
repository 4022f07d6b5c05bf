"""route(): per-site estimators, the readable plan, overrides, errors and SVI integration."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from pyro.optim import Adam

import pyro_reparam as pr

DATA = torch.tensor([0.5, -1.0, 2.0, 0.1])


def model(x=DATA):
    loc = pyro.sample("loc", dist.Normal(0.0, 3.0))
    scale = pyro.sample("scale", dist.Gamma(2.0, 2.0))
    with pyro.plate("data", len(x)):
        flag = pyro.sample("flag", dist.Bernoulli(0.3))
        count = pyro.sample("count", dist.Poisson(2.0))
        mean = loc + flag * 2.0 + 0.1 * count
        pyro.sample("x", dist.Normal(mean, scale), obs=x)


def guide(x=DATA):
    pyro.sample("loc", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))
    scale_q = dist.Gamma(pyro.param("a", torch.tensor(2.0)).exp(), 2.0)
    pyro.sample("scale", scale_q)
    with pyro.plate("data", len(x)):
        probs = pyro.param(
            "p", torch.full((len(x),), 0.3), constraint=dist.constraints.unit_interval
        )
        pyro.sample("flag", dist.Bernoulli(probs))
        rate = pyro.param("r", torch.full((len(x),), 2.0), constraint=dist.constraints.positive)
        pyro.sample("count", dist.Poisson(rate))


def test_plan_assigns_every_site():
    plan = pr.route(model, guide)
    assert plan["loc"].estimator == "pathwise" and plan["loc"].kind is pr.Kind.PATHWISE
    assert plan["scale"].estimator == "pathwise" and plan["scale"].kind is pr.Kind.IMPLICIT
    # Poisson cannot be enumerated, so the Bernoulli is not auto-enumerated either: one ELBO.
    assert plan["flag"].estimator == "score" and plan["count"].estimator == "score"
    assert plan["flag"].variance_reduction == "loo" and plan.num_particles == 4
    text = str(plan)
    for word in ("site", "estimator", "why", "leave-one-out", "ScoreFunctionELBO", "Gamma"):
        assert word in text
    assert isinstance(plan.elbo().inner, pr.ScoreFunctionELBO)


def test_single_particle_uses_running_average():
    plan = pr.route(model, guide, num_particles=1)
    assert plan["flag"].variance_reduction == "decaying"
    assert plan.elbo().inner.baseline_for("flag") == "decaying"


def test_pathwise_only_gives_closed_form_kl_or_trace_elbo():
    def m():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    def g():
        pyro.sample("z", dist.Normal(pyro.param("mu", torch.tensor(0.3)), 1.0))

    plan = pr.route(m, g)
    assert plan.elbo_class == "TraceMeanField_ELBO" and plan["z"].kl == "closed form"
    assert type(plan.elbo().inner).__name__ == "TraceMeanField_ELBO"
    plan = pr.route(m, g, analytic_kl=False)
    assert type(plan.elbo().inner) is Trace_ELBO and plan["z"].kl == "Monte Carlo"


def test_small_discrete_support_is_enumerated():
    def m():
        with pyro.plate("data", 4):
            z = pyro.sample("z", dist.Bernoulli(0.4))
            pyro.sample("x", dist.Normal(z, 1.0), obs=DATA)

    def g():
        with pyro.plate("data", 4):
            pyro.sample("z", dist.Bernoulli(pyro.param("q", torch.full((4,), 0.5))))

    plan = pr.route(m, g)
    assert plan["z"].estimator == "enumerate"
    elbo = plan.elbo()
    assert isinstance(elbo.inner, TraceEnum_ELBO)
    svi = SVI(m, g, Adam({"lr": 0.05}), elbo)
    assert torch.isfinite(torch.tensor(svi.step()))
    assert pr.route(m, g, enumerate="never")["z"].estimator == "score"


def test_overrides_and_errors():
    plan = pr.route(model, guide, estimators={"loc": "score"})
    assert plan["loc"].estimator == "score"
    assert "loc" in plan.forced_score
    with pytest.raises(ValueError, match="does not sample"):
        pr.route(model, guide, estimators={"nope": "score"})
    with pytest.raises(ValueError, match="no pathwise gradient"):
        pr.route(model, guide, estimators={"flag": "pathwise"})
    with pytest.raises(ValueError, match="choose one of"):
        pr.route(model, guide, estimators={"flag": "magic"})
    with pytest.raises(ValueError, match="no enumerable support"):
        pr.route(model, guide, estimators={"count": "enumerate"})


def test_unvectorizable_model_falls_back_with_a_note():
    def m():
        z = pyro.sample("z", dist.Bernoulli(0.3))
        pyro.sample("x", dist.Normal(float(z.item()), 1.0), obs=torch.tensor(0.2))

    def g():
        pyro.sample("z", dist.Bernoulli(pyro.param("q", torch.tensor(0.5))))

    plan = pr.route(m, g, enumerate="never")
    assert plan.num_particles == 1 and plan["z"].variance_reduction == "decaying"
    assert "4 vectorized particles failed" in str(plan)


def test_svi_runs_with_the_plan_elbo_and_learns():
    pyro.set_rng_seed(0)
    plan = pr.route(model, guide)
    judge = pr.ScoreFunctionELBO(num_particles=2000, baseline="none", max_plate_nesting=2)
    before = judge.loss(model, guide)
    svi = SVI(model, guide, Adam({"lr": 0.05}), plan.elbo())
    losses = [svi.step() for _ in range(300)]
    assert all(torch.isfinite(torch.tensor(losses)))
    after = judge.loss(model, guide)
    assert after < before - 1.0, (before, after)


def _shared_model(x):
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Bernoulli(0.3))
        pyro.sample("x", dist.Normal(2.0 * z, 1.0), obs=x)


def _shared_guide(x):
    q = pyro.param("q", torch.tensor(0.5), constraint=dist.constraints.unit_interval)
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Bernoulli(q))


def test_smaller_last_minibatch_does_not_crash():
    """Pyro's decaying baseline keeps per-position state and crashes here; ours does not."""
    plan = pr.route(_shared_model, _shared_guide, DATA, num_particles=1, enumerate="never")
    svi = SVI(_shared_model, _shared_guide, Adam({"lr": 0.01}), plan.elbo())
    svi.step(DATA)
    assert torch.isfinite(torch.tensor(svi.step(DATA[:3])))
    pyro.clear_param_store()
    pyro_elbo = pyro.infer.TraceGraph_ELBO()

    def guide_pyro_baseline(x):
        q = pyro.param("q", torch.tensor(0.5), constraint=dist.constraints.unit_interval)
        with pyro.plate("data", len(x)):
            pyro.sample(
                "z", dist.Bernoulli(q), infer={"baseline": {"use_decaying_avg_baseline": True}}
            )

    svi = SVI(_shared_model, guide_pyro_baseline, Adam({"lr": 0.01}), pyro_elbo)
    svi.step(DATA)
    with pytest.raises(RuntimeError, match="must match"):
        svi.step(DATA[:3])


def test_check_elbo_warns_once_naming_sites():
    with pytest.warns(UserWarning, match="flag"):
        bare = pr.check_elbo(model, guide, Trace_ELBO())
    assert set(bare) == {"flag", "count"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pr.check_elbo(model, guide, Trace_ELBO())  # second time: silent
        assert pr.check_elbo(model, guide, pr.route(model, guide).elbo()) == []


@pytest.mark.cuda
def test_plan_elbo_runs_on_cuda():
    x = DATA.cuda()
    with torch.device("cuda"):
        plan = pr.route(model, guide, x)
        svi = SVI(model, guide, Adam({"lr": 0.05}), plan.elbo())
        loss = svi.step(x)
    assert torch.isfinite(torch.tensor(loss))
    assert pyro.param("p").device.type == "cuda"
