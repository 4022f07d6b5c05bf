"""The plan is the ELBO: what ``str(plan)`` prints is what ``plan.elbo()`` does, requested
options are never replaced behind the user's back, and sites the planning trace did not contain
are routed by the same rule."""

import logging
import time
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, TraceEnum_ELBO
from pyro.optim import Adam

import pyro_reparam as pr

X = torch.tensor([0.3, -0.7, 1.2, 0.4])


def mixed_model(x=X):
    with pyro.plate("data", len(x)):
        a = pyro.sample("a", dist.Bernoulli(0.4))
        c = pyro.sample("c", dist.Poisson(3.0))
        pyro.sample("x", dist.Normal(a + 0.1 * c, 1.0), obs=x)


def mixed_guide(x=X):
    with pyro.plate("data", len(x)):
        pa = pyro.param("pa", torch.full((len(x),), 0.5), constraint=dist.constraints.unit_interval)
        pyro.sample("a", dist.Bernoulli(pa))
        rate = pyro.param("rate", torch.full((len(x),), 2.0), constraint=dist.constraints.positive)
        pyro.sample("c", dist.Poisson(rate))


def test_enumeration_beside_a_baselined_score_site_is_refused_with_the_choices():
    with pytest.raises(pr.RoutingError, match=r"\['a'\] are enumerated and \['c'\]") as err:
        pr.route(mixed_model, mixed_guide, estimators={"a": "enumerate"})
    assert "baseline='none'" in str(err.value)
    plan = pr.route(mixed_model, mixed_guide, estimators={"a": "enumerate"}, baseline="none")
    assert plan.elbo_class == "TraceEnum_ELBO"
    assert plan["c"].variance_reduction == "none" and "bare score function" in str(plan)
    assert isinstance(plan.elbo().inner, TraceEnum_ELBO)


def test_auto_never_enumerates_beside_a_score_site():
    plan = pr.route(mixed_model, mixed_guide)
    assert plan.sites_with("enumerate") == [] and plan.elbo_class == "ScoreFunctionELBO"
    assert plan["a"].variance_reduction == "loo" == plan["c"].variance_reduction


def nested_model():
    with pyro.plate("outer", 3, dim=-2), pyro.plate("inner", 2, dim=-1):
        z = pyro.sample("z", dist.Bernoulli(0.3))
        c = pyro.sample("c", dist.Poisson(1.0))
        pyro.sample("x", dist.Normal(z + c, 1.0), obs=torch.zeros(3, 2))


def nested_guide():
    q = pyro.param("q", torch.full((3, 2), 0.5), constraint=dist.constraints.unit_interval)
    with pyro.plate("outer", 3, dim=-2), pyro.plate("inner", 2, dim=-1):
        pyro.sample("z", dist.Bernoulli(q))
        pyro.sample("c", dist.Poisson(torch.ones(3, 2)))


def test_the_particle_dimension_is_counted_once():
    plan = pr.route(nested_model, nested_guide)
    assert plan.max_plate_nesting == 2 and plan.vectorize_particles
    assert "max_plate_nesting=2" in str(plan)
    elbo = plan.elbo()
    assert elbo.inner.max_plate_nesting == 3  # Pyro adds the particle dim itself, once
    assert torch.isfinite(torch.tensor(elbo.loss(nested_model, nested_guide)))
    assert pr.route(nested_model, nested_guide, max_plate_nesting=4).max_plate_nesting == 4


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "4"])
def test_num_particles_must_be_a_positive_integer(bad):
    with pytest.raises(pr.RoutingError, match="num_particles must be a positive integer"):
        pr.route(mixed_model, mixed_guide, num_particles=bad)


def test_plan_elbo_refuses_to_contradict_the_plan():
    plan = pr.route(mixed_model, mixed_guide)
    with pytest.raises(pr.RoutingError, match="num_particles=4, not 16; route again"):
        plan.elbo(num_particles=16)


def _unvectorizable_model():
    z = pyro.sample("z", dist.Bernoulli(0.3))
    pyro.sample("x", dist.Normal(float(z.item()), 1.0), obs=torch.tensor(0.2))


def _unvectorizable_guide():
    pyro.sample("z", dist.Bernoulli(pyro.param("q", torch.tensor(0.5))))


def test_a_requested_particle_count_is_never_replaced():
    with pytest.raises(pr.RoutingError, match="16 vectorized particles") as err:
        pr.route(_unvectorizable_model, _unvectorizable_guide, num_particles=16, enumerate="never")
    assert "num_particles=1" in str(err.value)
    auto = pr.route(_unvectorizable_model, _unvectorizable_guide, enumerate="never")
    assert auto.num_particles == 1 and "4 vectorized particles failed" in auto.notes[0]


@pytest.mark.parametrize(
    "bad",
    [{"baseline": "average"}, {"enumerate": "always"}, {"analytic_kl": "yes"}, {"linear": "x"}],
)
def test_unknown_options_list_the_choices(bad):
    with pytest.raises(pr.RoutingError, match="is not a choice; use one of"):
        pr.route(mixed_model, mixed_guide, **bad)


def test_check_elbo_warns_for_bare_dice_in_trace_enum():
    with pytest.warns(UserWarning, match=r"DiCE without a baseline\) to site\(s\) \['a', 'c'\]"):
        bare = pr.check_elbo(mixed_model, mixed_guide, TraceEnum_ELBO(max_plate_nesting=1))
    assert bare == ["a", "c"]


def test_enumeration_checks_the_support_size_before_allocating():
    n = 2_000_000

    def m():
        pyro.sample("z", dist.Categorical(logits=torch.zeros(n)))

    def g():
        pyro.sample("z", dist.Categorical(logits=pyro.param("l", torch.zeros(n))))

    start = time.perf_counter()
    with pytest.raises(pr.RoutingError, match="2,000,000 values, above the enumeration limit"):
        pr.route(m, g, estimators={"z": "enumerate"})
    plan = pr.route(m, g, check=False)
    assert plan["z"].estimator == "score"
    assert time.perf_counter() - start < 5.0


def seq_model(idx):
    for i in pyro.plate("seq", 10, subsample=idx):
        z = pyro.sample(f"z_{i}", dist.Bernoulli(0.3))
        pyro.sample(f"x_{i}", dist.Normal(2.0 * z, 1.0), obs=torch.tensor(0.5 * i))


def seq_guide(idx):
    q = pyro.param("q", torch.linspace(0.1, 0.9, 10), constraint=dist.constraints.unit_interval)
    for i in pyro.plate("seq", 10, subsample=idx):
        pyro.sample(f"z_{i}", dist.Bernoulli(q[i]))


def _exact_seq_elbo(idx) -> float:
    q = pyro.param("q").detach()
    total = 0.0
    for i in idx.tolist():
        terms = []
        for z, qz in ((1.0, q[i]), (0.0, 1 - q[i])):
            lp = dist.Bernoulli(0.3).log_prob(torch.tensor(z))
            lp = lp + dist.Normal(2.0 * z, 1.0).log_prob(torch.tensor(0.5 * i)) - qz.log()
            terms.append(qz * lp)
        total += float(sum(terms)) * (10 / len(idx))
    return total


def test_sites_with_new_names_are_routed_by_the_rule_not_the_bare_score_function():
    plan = pr.route(seq_model, seq_guide, torch.tensor([0, 1, 2]))
    assert plan.elbo_class == "TraceEnum_ELBO" and set(plan.sites) == {"z_0", "z_1", "z_2"}
    elbo = plan.elbo()
    for idx in (torch.tensor([5, 7, 9]), torch.tensor([3, 8, 4])):
        # enumerated (by rule) sites give the exact ELBO, with no randomness at all
        losses = {elbo.loss(seq_model, seq_guide, idx) for _ in range(3)}
        assert len(losses) == 1
        assert losses.pop() == pytest.approx(-_exact_seq_elbo(idx), rel=1e-5)


def test_an_unplanned_site_the_elbo_cannot_serve_is_refused():
    def m(flag):
        pyro.sample("w", dist.Normal(0.0, 1.0))
        if flag:
            pyro.sample("k", dist.Poisson(2.0))

    def g(flag):
        pyro.sample("w", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))
        if flag:
            pyro.sample("k", dist.Poisson(pyro.param("r", torch.tensor(2.0))))

    plan = pr.route(m, g, False)
    assert plan.elbo_class == "TraceMeanField_ELBO"
    with pytest.raises(pr.RoutingError, match="site 'k' \\(Poisson\\) needs the score function"):
        plan.elbo().loss(m, g, True)


def test_closed_form_kl_is_chosen_per_family_pair():
    def m():
        pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.sample("b", dist.LogNormal(0.0, 1.0))

    def g():
        pyro.sample("a", dist.Normal(pyro.param("ma", torch.tensor(0.2)), 1.0))
        pyro.sample("b", dist.Gamma(pyro.param("kb", torch.tensor(2.0)), 1.0))

    plan = pr.route(m, g)
    assert plan.elbo_class == "Trace_ELBO" and plan["a"].kl == "Monte Carlo"
    assert "KL has no closed form" in plan["b"].why
    with pytest.raises(pr.RoutingError, match=r"analytic_kl=True, but site\(s\) \['b'\]"):
        pr.route(m, g, analytic_kl=True)


def test_route_leaves_the_callers_random_streams_alone():
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    pr.route(mixed_model, mixed_guide)
    assert torch.equal(torch.rand(3), expected)


def test_no_guessed_plate_nesting_log_line(caplog):
    plan = pr.route(mixed_model, mixed_guide)
    with caplog.at_level(logging.INFO, logger="pyro"):
        svi = SVI(mixed_model, mixed_guide, Adam({"lr": 0.01}), plan.elbo())
        svi.step()
    assert "Guessed max_plate_nesting" not in caplog.text


def test_plan_prints_what_was_built():
    plan = pr.route(mixed_model, mixed_guide)
    text = str(plan)
    assert "ELBO: ScoreFunctionELBO, 4 vectorized particles, max_plate_nesting=1" in text
    elbo = plan.elbo()
    assert elbo.inner.num_particles == plan.num_particles == 4
    assert elbo.inner.vectorize_particles and elbo.inner.baseline_for("a") == "loo"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pr.check_elbo(mixed_model, mixed_guide, elbo) == []


def _layer_model(x, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(2, 3), 1.0).to_event(2))
    b = pyro.sample("b", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(torch.nn.functional.linear(x, w, b), s).to_event(1), obs=y)


def _layer_guide(x, y):
    w_loc = pyro.param("w_loc", torch.full((2, 3), 0.3))
    w_scale = pyro.param("w_scale", torch.full((2, 3), 0.5), constraint=dist.constraints.positive)
    pyro.sample("w", dist.Normal(w_loc, w_scale).to_event(2))
    pyro.sample("b", dist.Normal(pyro.param("b_loc", torch.zeros(2)), 0.5).to_event(1))
    pyro.sample("s", dist.LogNormal(pyro.param("s_loc", torch.tensor(0.0)), 0.1))


def test_linear_layer_estimators_are_routed_to_the_sites_they_act_on():
    x, y = torch.randn(64, 3), torch.randn(64, 2)
    plain = pr.route(_layer_model, _layer_guide, x, y)
    local = pr.route(_layer_model, _layer_guide, x, y, linear="local")
    assert (
        local["w"].variance_reduction
        == local["b"].variance_reduction
        == ("local reparameterization")
    )
    assert local["s"].variance_reduction == "-"  # not a layer weight
    assert "linear layers: local" in str(local) and local.elbo_class == plain.elbo_class
    flip = pr.route(_layer_model, _layer_guide, x, y, linear="flipout")
    assert flip["w"].variance_reduction == "flipout"
    params = ["w_loc"]
    pyro.get_param_store()  # the params exist after routing
    var = {
        name: pr.gradient_variance(
            _layer_model, _layer_guide, plan.elbo(), x, y, num_draws=300, params=params
        ).trace_cov
        for name, plan in (("plain", plain), ("local", local))
    }
    assert var["local"] < var["plain"] / 2, var


def test_linear_estimator_without_a_linear_layer_is_refused():
    with pytest.raises(pr.RoutingError, match=r"no F\.linear call of the model takes a Normal"):
        pr.route(mixed_model, mixed_guide, linear="local")
