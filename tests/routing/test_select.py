"""route(select="measure"): the pilot picks the estimator that is clearly best, and says so."""

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_reparam as pr
from pyro_reparam.routing import RoutingError

B = 200


def coin_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(3.0 * z, 1.0), obs=x)


def coin_guide(x):
    a = pyro.param("a", torch.zeros(x.shape[0]))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Bernoulli(logits=a))


PRIOR = torch.tensor([0.1, 0.2, 0.3, 0.4])
MU = torch.tensor([-1.0, 0.5, 2.0, 3.0])


def cat_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.OneHotCategorical(PRIOR))
        pyro.sample("x", dist.Normal((z * MU).sum(-1), 1.0), obs=x)


def cat_guide(x):
    a = pyro.param("a", torch.tensor([0.6, -0.4, 0.1, 0.3]).expand(x.shape[0], 4).clone())
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.OneHotCategorical(logits=a))


def test_measure_picks_disarm_where_it_is_exact():
    """One coin per datum at p = 1/2: an antithetic pair always differs, so DisARM's gradient
    is exact (zero variance) while leave-one-out's is not."""
    x = torch.randn(B) + 1.5
    rule = pr.route(coin_model, coin_guide, x, enumerate="never")
    plan = pr.route(coin_model, coin_guide, x, enumerate="never", select="measure", pilot_draws=10)
    assert rule.elbo_class == "ScoreFunctionELBO"
    assert plan.elbo_class == "DisARM_ELBO"
    assert plan["z"].variance_reduction == "disarm"
    chosen = [r for r in plan.selection if r["chosen"]]
    assert [r["estimator"] for r in chosen] == ["disarm"]
    assert {r["estimator"] for r in plan.selection} == {"loo", "disarm", "arms", "taylor_disarm"}
    # the Taylor variant fits one pair (3 evaluations) in the budget of 4; with one coordinate
    # per datum its control variate (over the *other* coordinates) is zero, so it is exact too
    # and the tie goes to the candidate measured first
    assert {r["estimator"]: r["evaluations"] for r in plan.selection} == {
        "loo": 4, "disarm": 4, "arms": 4, "taylor_disarm": 3
    }  # fmt: skip
    text = str(plan)
    assert "measured pilot" in text and "disarm (chosen)" in text and "tr Cov x evals" in text
    loo = next(r for r in plan.selection if r["estimator"] == "loo")
    assert f"{loo['variance_x_evaluations']:.4g}" in text
    assert "measured: tr Cov x evaluations" in plan["z"].why
    elbo = plan.elbo()
    assert type(elbo.inner).__name__ == "DisARM_ELBO"
    svi = pyro.infer.SVI(coin_model, coin_guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    assert torch.isfinite(torch.tensor(svi.step(x)))
    assert type(plan.elbo(num_particles=4).inner).__name__ == "DisARM_ELBO"  # the plan's own
    with pytest.raises(RoutingError, match="DisARM_ELBO takes no retain_graph"):
        plan.elbo(retain_graph=True)  # an option it would otherwise drop silently


def test_measure_picks_leave_one_out_for_this_categorical():
    """On this categorical toy leave-one-out has about half DisARM's variance (see
    tests/estimators/test_disarm_categorical.py); ARMS does not apply."""
    x = torch.randn(B) + 1.5
    plan = pr.route(cat_model, cat_guide, x, enumerate="never", select="measure", pilot_draws=30)
    assert plan.elbo_class == "ScoreFunctionELBO"
    assert {r["estimator"] for r in plan.selection} == {"loo", "disarm"}
    assert [r["estimator"] for r in plan.selection if r["chosen"]] == ["loo"]
    assert "loo (chosen)" in str(plan)


def test_measure_leaves_rng_and_rule_default_alone():
    x = torch.randn(B) + 1.5
    pyro.set_rng_seed(5)
    pr.route(coin_model, coin_guide, x, enumerate="never", select="measure", pilot_draws=5)
    after = torch.rand(3)
    pyro.set_rng_seed(5)
    assert torch.equal(torch.rand(3), after)
    assert pr.route(coin_model, coin_guide, x).selection is None
    with pytest.raises(RoutingError, match="select="):
        pr.route(coin_model, coin_guide, x, select="fastest")
    with pytest.raises(RoutingError, match="pilot_draws"):
        pr.route(coin_model, coin_guide, x, select="measure", pilot_draws=2)


def test_measure_keeps_enumeration():
    def model():
        pyro.sample("z", dist.Bernoulli(0.3))

    def guide():
        pyro.sample("z", dist.Bernoulli(logits=pyro.param("a", torch.tensor(0.0))))

    plan = pr.route(model, guide, select="measure")
    assert plan.elbo_class == "TraceEnum_ELBO"
    assert any("enumeration is exact" in n for n in plan.notes)


L_WIDE = 16


def wide_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Bernoulli(0.5 * torch.ones(L_WIDE)).to_event(1))
        pyro.sample("x", dist.Normal(3 * torch.tanh(0.3 * z @ torch.linspace(-1, 1, L_WIDE)), 0.6),
                    obs=x)  # fmt: skip


def wide_guide(x):
    a = pyro.param("wide_a", torch.linspace(-1.0, 1.0, L_WIDE).expand(x.shape[0], -1).clone())
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Bernoulli(logits=a).to_event(1))


def test_measure_picks_the_taylor_control_variate_where_f_is_smooth_in_many_coordinates():
    """16 coordinates per datum through a smooth function: the midpoint Taylor control variate
    removes most of DisARM's variance at 3 evaluations (tests/estimators/test_taylor_disarm.py),
    so it wins on tr Cov x evaluations; the plan builds it and SVI steps with it."""
    x = torch.randn(B) + 1.3
    plan = pr.route(wide_model, wide_guide, x, select="measure", pilot_draws=10)
    assert [r["estimator"] for r in plan.selection if r["chosen"]] == ["taylor_disarm"]
    assert plan.elbo_class == "TaylorDisARM_ELBO" and plan.num_particles == 2
    assert plan["z"].variance_reduction == "taylor_disarm"
    text = str(plan)
    assert "2 vectorized particles" in text and "3 model evaluations per step" in text
    assert "taylor_disarm (chosen)" in text
    elbo = plan.elbo()
    assert type(elbo.inner).__name__ == "TaylorDisARM_ELBO" and elbo.evaluations_per_draw == 3
    svi = pyro.infer.SVI(wide_model, wide_guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    assert torch.isfinite(torch.tensor(svi.step(x)))
