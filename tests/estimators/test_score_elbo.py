"""ScoreFunctionELBO keeps Pyro's ELBO conventions, with TraceGraph_ELBO as the reference:
the same loss on the same traces, the same gradient where the estimators agree, Pyro's
``infer={"baseline": ...}`` keys, and Rao-Blackwellization that leaves out what a site's cost
does not depend on."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.distributions.testing.rejection_gamma import ShapeAugmentedGamma
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO
from torch import nn

import pyro_reparam as pr
from pyro_reparam.estimators.score_elbo import downstream_costs

X = torch.tensor([0.3, -1.2, 2.0, 0.8])
UNIT = dist.constraints.unit_interval


def _params(names):
    return {n: pyro.get_param_store().get_param(n).unconstrained() for n in names}


def _grads(elbo, model, guide, seed, extra=()):
    """(loss, gradients by name) of one ``loss_and_grads`` under ``seed``."""
    pyro.set_rng_seed(seed)
    with poutine.trace(param_only=True) as tape:
        loss = elbo.loss_and_grads(model, guide)
    params = {n: s["value"].unconstrained() for n, s in tape.trace.nodes.items()}
    params.update(extra)
    grads = {n: p.grad.clone() for n, p in params.items() if p.grad is not None}
    for p in params.values():
        p.grad = None
    return loss, grads


# Models for the comparison with TraceGraph_ELBO: a global Beta (pathwise) and local Bernoullis.


def _beta_bernoulli(handler=None, factor=False):
    def model():
        p = pyro.sample("p", dist.Beta(2.0, 2.0))
        with pyro.plate("data", 4), handler or _nothing():
            z = pyro.sample("z", dist.Bernoulli(p))
            pyro.sample("x", dist.Normal(2.0 * z - 1.0, 1.0), obs=X)
        if factor:
            pyro.factor("f", -(z - 0.3).pow(2).sum())

    def guide(net=None, value=None):
        a = pyro.param("a", torch.tensor(2.0), constraint=dist.constraints.positive)
        b = pyro.param("b", torch.tensor(3.0), constraint=dist.constraints.positive)
        probs = pyro.param(
            "probs", torch.full((4,), 0.4), constraint=dist.constraints.unit_interval
        )
        pyro.sample("p", dist.Beta(a, b))
        options = {}
        if net is not None:
            options = {"nn_baseline": net, "nn_baseline_input": X[:, None]}
        if value is not None:
            options = {"baseline_value": pyro.param("b_value", torch.zeros(4))}
        with pyro.plate("data", 4), handler or _nothing():
            pyro.sample("z", dist.Bernoulli(probs), infer={"baseline": options})

    return model, guide


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _nested_plates():
    def model():
        c = pyro.sample("c", dist.Categorical(torch.tensor([0.2, 0.3, 0.5])))
        with pyro.plate("groups", 2, dim=-2):
            g = pyro.sample("g", dist.Normal(c.float(), 1.0))
            with pyro.plate("items", 3, dim=-1):
                k = pyro.sample("k", dist.Poisson(g.exp()))
                pyro.sample("y", dist.Normal(k.float(), 1.0), obs=torch.ones(2, 3))

    def guide(net=None, value=None):
        logits = pyro.param("logits", torch.zeros(3))
        loc = pyro.param("loc", torch.zeros(2, 1))
        rate = pyro.param("rate", torch.ones(2, 3), constraint=dist.constraints.positive)
        pyro.sample("c", dist.Categorical(logits=logits))
        with pyro.plate("groups", 2, dim=-2):
            pyro.sample("g", dist.Normal(loc, 1.0))
            with pyro.plate("items", 3, dim=-1):
                pyro.sample("k", dist.Poisson(rate))

    return model, guide


MODELS = {
    "plate": lambda: _beta_bernoulli(),
    "scale": lambda: _beta_bernoulli(poutine.scale(scale=3.0)),
    "mask": lambda: _beta_bernoulli(poutine.mask(mask=torch.tensor([True, False, True, True]))),
    "factor": lambda: _beta_bernoulli(factor=True),
    "nested plates": _nested_plates,
}


@pytest.mark.parametrize("num_particles", [1, 3])
@pytest.mark.parametrize("which", sorted(MODELS))
def test_loss_and_gradient_equal_tracegraph_on_the_same_traces(which, num_particles):
    """Without baselines the two estimators are the same function of the traces."""
    model, guide = MODELS[which]()
    kw = {"num_particles": num_particles, "vectorize_particles": num_particles > 1}
    ours, ref = pr.ScoreFunctionELBO(baseline="none", **kw), TraceGraph_ELBO(**kw)
    for seed in (0, 1):
        pyro.set_rng_seed(seed)
        want = ref.loss(model, guide)
        pyro.set_rng_seed(seed)
        assert ours.loss(model, guide) == pytest.approx(want, rel=1e-6, abs=1e-6)
        loss, grads = _grads(ours, model, guide, seed)
        ref_loss, ref_grads = _grads(ref, model, guide, seed)
        assert loss == pytest.approx(ref_loss, rel=1e-6, abs=1e-6)
        assert grads.keys() == ref_grads.keys()
        for name in grads:
            torch.testing.assert_close(grads[name], ref_grads[name], msg=name)


@pytest.mark.parametrize("baseline", ["nn_baseline", "baseline_value"])
def test_nn_baseline_and_learnable_baseline_value_are_trained_as_in_tracegraph(baseline):
    """Both are trained by (c - b)^2 and subtracted from the cost, as in TraceGraph_ELBO."""
    model, guide = _beta_bernoulli()
    net = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1), nn.Flatten(0))
    kw = {"net": net} if baseline == "nn_baseline" else {"value": True}
    with_baseline = lambda: guide(**kw)  # noqa: E731
    extra = dict(net.named_parameters()) if baseline == "nn_baseline" else {}
    _, grads = _grads(pr.ScoreFunctionELBO(), model, with_baseline, 0, extra)
    _, ref_grads = _grads(TraceGraph_ELBO(), model, with_baseline, 0, extra)
    registered = {k for k in grads if k.startswith("_pyro_reparam.baseline.z$$$")}
    assert len(registered) == len(extra)  # in the step's param trace: the optimizer trains it
    grads = {k: v for k, v in grads.items() if k not in registered}
    assert grads.keys() == ref_grads.keys()
    assert set(extra) <= set(grads) and ("b_value" in grads or extra)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], msg=name)


def _sag_pair():
    def model():
        z = pyro.sample("z", dist.Gamma(3.0, 1.0))
        pyro.sample("x", dist.Poisson(z), obs=torch.tensor(5.0))

    def guide():
        a = pyro.param("alpha", torch.tensor(1.5), constraint=dist.constraints.positive)
        b = pyro.param("beta", torch.tensor(1.0), constraint=dist.constraints.positive)
        pyro.sample("z", ShapeAugmentedGamma(a, b, boost=1))

    return model, guide


@pytest.mark.filterwarnings("ignore:ShapeAugmentedGamma is not declared")
def test_partially_reparameterized_sampler_keeps_its_own_sample():
    """ShapeAugmentedGamma asserts that score_parts gets its own draw; tracking it keeps the
    tensor it drew, and the loss is TraceGraph_ELBO's on the same traces."""
    model, guide = _sag_pair()
    elbo = pr.ScoreFunctionELBO()
    for seed in range(3):
        pyro.set_rng_seed(seed)
        want = TraceGraph_ELBO().loss(model, guide)
        pyro.set_rng_seed(seed)
        assert elbo.loss(model, guide) == pytest.approx(want, rel=1e-6)
        loss, grads = _grads(elbo, model, guide, seed)
        assert loss == pytest.approx(want, rel=1e-6)
        assert set(grads) == {"alpha", "beta"} and all(g.isfinite().all() for g in grads.values())


def test_differentiable_loss_is_the_loss_with_the_surrogate_gradient():
    model, guide = MODELS["plate"]()
    names = ["a", "b", "probs"]
    for make in (
        lambda: pr.ScoreFunctionELBO(),
        lambda: pr.ScoreFunctionELBO(num_particles=3, baseline="loo"),
    ):
        pyro.set_rng_seed(5)
        want = make().loss(model, guide)
        pyro.set_rng_seed(5)
        value = make().differentiable_loss(model, guide)
        value.backward()
        grads = {n: p.grad.clone() for n, p in _params(names).items()}
        for p in _params(names).values():
            p.grad = None
        loss, ref = _grads(make(), model, guide, 5)
        assert value.item() == pytest.approx(want, rel=1e-5) == loss
        for name in names:
            torch.testing.assert_close(grads[name], ref[name], msg=name)


def test_nothing_to_train_or_everything_detached_does_not_raise():
    def model():
        pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.tensor(0.5))

    def detached_guide():
        p = pyro.param("p", torch.tensor(0.3), constraint=UNIT)
        pyro.sample("z", dist.Bernoulli(p.detach()))

    def detached_model():
        z = pyro.sample("z", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(0.5))

    elbo = pr.ScoreFunctionELBO()
    assert elbo.loss_and_grads(model, lambda: None) == pytest.approx(-model_log_prob())
    assert isinstance(elbo.differentiable_loss(model, lambda: None), torch.Tensor)
    svi = SVI(detached_model, detached_guide, pyro.optim.Adam({"lr": 0.1}), elbo)
    assert isinstance(svi.step(), float)
    assert pyro.param("p").item() == pytest.approx(0.3)


def model_log_prob():
    return dist.Normal(0.0, 1.0).log_prob(torch.tensor(0.5)).item()


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_num_particles_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="num_particles must be a positive integer") as info:
        pr.ScoreFunctionELBO(num_particles=bad)
    assert "\n" not in str(info.value)


def _bernoulli_pair(options=None):
    def model():
        with pyro.plate("data", 4):
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(z, 1.0), obs=X)

    def guide():
        probs = pyro.param(
            "probs", torch.full((4,), 0.3), constraint=dist.constraints.unit_interval
        )
        with pyro.plate("data", 4):
            pyro.sample("z", dist.Bernoulli(probs), infer={"baseline": options or {}})

    return model, guide


def test_leave_one_out_with_one_particle_uses_the_running_average_and_says_so():
    elbo = pr.ScoreFunctionELBO(num_particles=1, baseline="loo")
    assert elbo.baseline_for("z") == "decaying" and "running average" in elbo.notes[0]
    elbo.loss_and_grads(*_bernoulli_pair())
    assert elbo.baseline_for("z") == "decaying" and "z" in elbo.baseline_state()
    with pytest.raises(ValueError, match="vectorize_particles=True"):
        pr.ScoreFunctionELBO(num_particles=3, baseline="loo", vectorize_particles=False)


BAD_OPTIONS = [
    ({"use_decaying_avg_baseline": True, "beta": 0.9}, ValueError, "Unrecognized baseline opt"),
    ({"nn_baseline": lambda x: x.sum(-1), "nn_baseline_input": X}, TypeError, "nn.Module"),
    ({"nn_baseline": nn.Linear(1, 1)}, ValueError, "nn_baseline_input go together"),
    ({"baseline_beta": 1.5}, ValueError, r"baseline_beta must be a number in \[0, 1\]"),
]


@pytest.mark.parametrize(("options", "error", "match"), BAD_OPTIONS)
def test_baseline_options_are_pyros_keys_with_errors_that_name_the_site(options, error, match):
    with pytest.raises(error, match=match) as info:
        pr.ScoreFunctionELBO().loss_and_grads(*_bernoulli_pair(options))
    assert "'z'" in str(info.value) and "\n" not in str(info.value)
    if error is ValueError and "Unrecognized" in match:
        assert "use_decaying_avg_baseline, baseline_beta, nn_baseline" in str(info.value)


def test_use_decaying_avg_baseline_selects_the_running_average_and_beta_1_freezes_it():
    elbo = pr.ScoreFunctionELBO(baseline="none")
    pair = _bernoulli_pair({"use_decaying_avg_baseline": True, "baseline_beta": 1.0})
    elbo.loss_and_grads(*pair)
    assert elbo.baseline_for("z") == "decaying"
    first = elbo.baseline_state()["z"]
    for _ in range(3):
        elbo.loss_and_grads(*pair)
    assert elbo.baseline_state()["z"] == first  # beta = 1: frozen at the first mean cost
    assert pr.ScoreFunctionELBO(baseline_beta=1.0).baseline_beta == 1.0


# Rao-Blackwellization: a site's cost holds what depends on it and nothing upstream or beside.

OBS = torch.tensor([0.2, 1.1, -0.4])


def rb_model():
    z1 = pyro.sample("z1", dist.Bernoulli(0.4))
    z2 = pyro.sample("z2", dist.Bernoulli(0.2 + 0.6 * z1))  # model: z2 depends on z1
    pyro.sample("x1", dist.Normal(z1, 1.0), obs=OBS[0])
    pyro.sample("x2", dist.Normal(z2, 1.0), obs=OBS[1])
    z3 = pyro.sample("z3", dist.Bernoulli(0.5))
    pyro.sample("x3", dist.Normal(z3, 1.0), obs=OBS[1])
    z5 = pyro.sample("z5", dist.Bernoulli(0.5))
    pyro.sample("x5", dist.Normal(z5, 1.0), obs=OBS[2])
    with pyro.plate("data", 3):
        z4 = pyro.sample("z4", dist.Bernoulli(0.5))
        pyro.sample("x4", dist.Normal(z4 + z3, 1.0), obs=OBS)


def rb_guide():
    probs = pyro.param("probs", torch.tensor([0.3, 0.6, 0.5, 0.7]))
    z1 = pyro.sample("z1", dist.Bernoulli(probs[0]))
    pyro.sample("z2", dist.Bernoulli(probs[1]))  # guide: z2 independent of z1
    pyro.sample("z3", dist.Bernoulli(probs[2]))
    pyro.sample("z5", dist.Bernoulli(0.2 + 0.6 * z1))  # guide: z5 depends on z1
    with pyro.plate("data", 3):
        pyro.sample("z4", dist.Bernoulli(probs[3].expand(3)))


def test_downstream_costs_hold_exactly_what_depends_on_each_site():
    """As Pyro's tests/infer/test_compute_downstream_costs.py: each cost, by hand."""
    model_trace, guide_trace = pr.ScoreFunctionELBO()._get_trace(rb_model, rb_guide, (), {})
    m = {n: s["log_prob"] for n, s in model_trace.nodes.items() if s["type"] == "sample"}
    g = {n: s["log_prob"] for n, s in guide_trace.nodes.items() if s["type"] == "sample"}
    want = {
        "z1": m["z1"] + m["z2"] + m["x1"] - g["z1"] + m["z5"] + m["x5"] - g["z5"],
        "z2": m["z2"] + m["x2"] - g["z2"],  # nothing of z1 (upstream)
        "z3": m["z3"] + m["x3"] + m["x4"].sum() - g["z3"],
        "z4": m["z4"] + m["x4"] - g["z4"],  # per datum: not the other data's terms
        "z5": m["z5"] + m["x5"] - g["z5"],
    }
    costs = downstream_costs(model_trace, guide_trace)
    assert costs.keys() == want.keys()
    for name, cost in costs.items():
        torch.testing.assert_close(cost, want[name].detach(), msg=name)


def _noisy_pair():
    """z's cost is its own likelihood; the pathwise w adds large noise that does not depend on
    z: with every cost in every score term, z's gradient variance is many times larger."""

    def model():
        z = pyro.sample("z", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(1.0))
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(w, 0.2), obs=torch.tensor(3.0))

    def guide():
        pyro.sample("z", dist.Bernoulli(logits=pyro.param("logit", torch.tensor(0.0))))
        pyro.sample("w", dist.Normal(pyro.param("mu", torch.tensor(0.0)), 1.0))

    return model, guide


def test_rao_blackwellization_lowers_the_gradient_variance():
    model, guide = _noisy_pair()
    stats = pr.compare_estimators(
        model,
        guide,
        {"rb": pr.ScoreFunctionELBO(baseline="none"), "every cost": Trace_ELBO()},
        evaluations=300,
        params=["logit"],
    )
    ratio = stats["rb"].trace_cov / stats["every cost"].trace_cov
    assert ratio < 0.1, ratio
