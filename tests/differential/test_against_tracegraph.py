"""Differential tests: the plugin's ELBOs against Pyro's ``TraceGraph_ELBO`` on random models.

Each generated case (``model_gen.generate``) is a small random Pyro model and guide (plates,
subsampling, sequential loops, ``pyro.markov``, scale, masks, factors, discrete and continuous
latents). On the same RNG seed the ELBOs below draw the same traces, so their values must agree
exactly; their gradients must agree exactly where the estimator is the same (no baseline, or
the same baseline) and in expectation otherwise.

1. ``test_loss_matches_tracegraph``: ``ScoreFunctionELBO(...).loss`` and ``loss_and_grads``
   equal ``TraceGraph_ELBO`` on the same traces (several particle counts, vectorized or not,
   baselines "none" / "decaying" / "loo"); with ``baseline="none"`` the gradients are equal.
   ``test_routed_loss_matches_tracegraph``: the same for ``route(model, guide, step).elbo()``
   where its plan is per-trace comparable (``ScoreFunctionELBO``/``Trace_ELBO``), else for the
   plan routed with ``enumerate="never", analytic_kl=False``.
   ``test_differentiable_loss_is_the_loss``: Pyro's convention, the value of
   ``differentiable_loss`` is the loss estimate and its gradient that of ``loss_and_grads``.
2. ``test_gradient_unbiased``: on small cases whose discrete sites are all enumerable, the mean
   gradient over independent draws lies within Bonferroni-corrected t-bounds of the exact ELBO
   gradient (``TraceEnum_ELBO``, every discrete guide site enumerated, full data, continuous
   sites with many particles), for ``TraceGraph_ELBO`` and the plugin's ELBOs alike.
3. ``test_pass_fail_parity``: invalid cases rejected by ``TraceGraph_ELBO`` are rejected by the
   plugin (its ELBO and the routed one); unusual valid ones are accepted by all.
4. ``test_downstream_costs_match`` (Rao-Blackwellization): each score site's downstream cost,
   read through Pyro's public ``nn_baseline`` convention, equals ``TraceGraph_ELBO``'s on the
   same traces (so do the gradients); ``test_downstream_costs_function_on_tracegraph_traces``:
   the plugin's ``downstream_costs`` applied to ``TraceGraph_ELBO``'s own traces gives the
   costs ``TraceGraph_ELBO`` uses; ``test_loo_baseline_exact``: the leave-one-out estimator equals
   ``TraceGraph_ELBO`` given ``baseline_value = (sum_j c_j - c_k) / (K - 1)`` computed from
   those costs, and ``test_decaying_baseline_exact`` the running average likewise.
"""

from __future__ import annotations

import itertools
import math
import warnings

import pyro
import pyro.poutine as poutine
import pytest
import torch
from model_gen import (
    ACCEPTED_KINDS,
    INVALID_KINDS,
    CostProbe,
    generate,
    invalid_case,
)
from pyro.infer import TraceEnum_ELBO, TraceGraph_ELBO
from pyro.poutine.subsample_messenger import _Subsample
from scipy import stats

import pyro_reparam as pr

N_SEEDS = 40
SEEDS = list(range(N_SEEDS))
GRAD_SEEDS = list(
    itertools.islice(
        (s for s in range(1000, 1200) if generate(s, small=True).gradient_eligible()), 8
    )
)

# ScoreFunctionELBO configurations; TraceGraph_ELBO gets the same particles, vectorization and
# max_plate_nesting ("nesting": the case's plate dims, else inf: guessed by Pyro).
CONFIGS = {
    "K1-none": dict(num_particles=1, baseline="none"),
    "K2-seq-decaying": dict(num_particles=2, baseline="decaying", vectorize_particles=False),
    "K3-vec-loo": dict(num_particles=3, baseline="loo", vectorize_particles=True, nesting=True),
    "K2-vec-none-inf": dict(num_particles=2, baseline="none", vectorize_particles=True),
}
RTOL, ATOL = 1e-5, 1e-4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Found vars in model but not guide")
        warnings.filterwarnings("ignore", ".*possibly invalid dependency")
        yield


_CASES: dict = {}


def case_for(seed, small=False):
    if (seed, small) not in _CASES:
        _CASES[seed, small] = generate(seed, small=small)
    return _CASES[seed, small]


def fresh(seed):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)


def elbo_kwargs(config, case, nesting_delta=0):
    kw = {k: v for k, v in config.items() if k not in ("baseline", "nesting")}
    if config.get("nesting"):
        kw["max_plate_nesting"] = case.nesting + nesting_delta
    return kw


def make_pair(config, case):
    kw = elbo_kwargs(config, case)
    return TraceGraph_ELBO(**kw), pr.ScoreFunctionELBO(baseline=config["baseline"], **kw)


def param_grads(zero=True):
    """Gradients of the case's parameters (model ``m_*``, guide ``q_*``), zeroed after."""
    out = {}
    for name, p in pyro.get_param_store().named_parameters():
        if name.startswith(("m_", "q_")):
            out[name] = torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
            if zero:
                p.grad = None
    return out


def assert_close(a, b, what):
    assert math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL), f"{what}: {a!r} != {b!r}"


def assert_grads_close(ga, gb, what):
    assert set(ga) == set(gb), f"{what}: parameters differ: {sorted(set(ga) ^ set(gb))}"
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], rtol=1e-4, atol=1e-4, msg=f"{what}: {name}")


def config_for(seed):
    names = list(CONFIGS)
    return names[seed % len(names)]


# ----------------------------------------------------------------------------- 1. values
@pytest.mark.parametrize("seed", SEEDS)
def test_loss_matches_tracegraph(seed):
    """Same traces (same seed): ScoreFunctionELBO's loss and loss_and_grads value equal
    TraceGraph_ELBO's; with no baseline the gradients are equal too. Two steps, so that
    subsample sizes change and baselines carry state."""
    case = case_for(seed)
    name = config_for(seed)
    config = CONFIGS[name]
    model, guide, desc = case.triple()
    tg, sf = make_pair(config, case)
    tg_lag, sf_lag = make_pair(config, case)
    for step in range(2):
        rng = 1000 * seed + step
        fresh(rng)
        tg_loss = tg_lag.loss_and_grads(model, guide, step)
        tg_grads = param_grads()
        fresh(rng)
        assert_close(sf.loss(model, guide, step), tg_loss, f"{name} loss, step {step}: {desc}")
        fresh(rng)
        assert_close(tg.loss(model, guide, step), tg_loss, "TraceGraph loss vs loss_and_grads")
        fresh(rng)
        sf_loss = sf_lag.loss_and_grads(model, guide, step)
        assert_close(sf_loss, tg_loss, f"{name} loss_and_grads value, step {step}: {desc}")
        if config["baseline"] == "none":
            assert_grads_close(param_grads(), tg_grads, f"{name} gradients: {desc}")


ROUTED_SEEDS = SEEDS[:24]


@pytest.mark.parametrize("seed", ROUTED_SEEDS)
def test_routed_loss_matches_tracegraph(seed):
    """``route(model, guide, step).elbo()`` draws the traces TraceGraph_ELBO draws (with the
    plan's particles and nesting) and gives the same loss, where the plan's ELBO is per-trace
    comparable; otherwise the plan with enumeration and the closed-form KL turned off is."""
    case = case_for(seed)
    model, guide, desc = case.triple()
    fresh(seed)
    plan = pr.route(model, guide, 0)
    if plan.elbo_class not in ("ScoreFunctionELBO", "Trace_ELBO"):
        plan = pr.route(model, guide, 0, enumerate="never", analytic_kl=False)
        assert plan.elbo_class in ("ScoreFunctionELBO", "Trace_ELBO"), str(plan)
    kw = dict(
        num_particles=plan.num_particles,
        vectorize_particles=plan.vectorize_particles,
        max_plate_nesting=plan.max_plate_nesting,
    )
    routed = plan.elbo()
    for step in range(2):
        rng = 1000 * seed + step
        fresh(rng)
        tg_loss = TraceGraph_ELBO(**kw).loss(model, guide, step)
        fresh(rng)
        assert_close(routed.loss(model, guide, step), tg_loss, f"routed loss: {plan}\n{desc}")
        fresh(rng)
        value = routed.loss_and_grads(model, guide, step)
        assert_close(value, tg_loss, f"routed loss_and_grads: {plan}\n{desc}")


DIFF_SEEDS = SEEDS[:16]


@pytest.mark.parametrize("which", ["ScoreFunctionELBO", "routed"])
@pytest.mark.parametrize("seed", DIFF_SEEDS)
def test_differentiable_loss_is_the_loss(seed, which):
    """Pyro's convention: ``differentiable_loss`` returns a tensor whose value is the loss
    estimate (the value ``loss`` gives on the same traces) and whose gradient is the one
    ``loss_and_grads`` produces."""
    case = case_for(seed)
    model, guide, desc = case.triple()
    config = CONFIGS[config_for(seed)]

    def make():
        if which == "routed":
            fresh(seed)
            return pr.route(model, guide, 0).elbo()
        return make_pair(config, case)[1]

    fresh(seed)
    loss = make().loss(model, guide, 0)
    fresh(seed)
    value = make().differentiable_loss(model, guide, 0)
    assert torch.is_tensor(value) and value.dim() == 0
    value.backward()
    dl_grads = param_grads()
    fresh(seed)
    make().loss_and_grads(model, guide, 0)
    assert_grads_close(dl_grads, param_grads(), f"{which} differentiable_loss gradient: {desc}")
    assert_close(value.item(), loss, f"{which} differentiable_loss value vs loss: {desc}")


# ----------------------------------------------------------------------------- 4. costs
def probe_guide(case, probes):
    def baselines(name):
        probes.setdefault(name, CostProbe())
        return {"nn_baseline": probes[name]}

    return case.guide_fn(baselines=baselines)


def costs_of(probes, num_particles):
    return {name: probe.costs(num_particles) for name, probe in probes.items()}


RB_CONFIGS = ["K1-none", "K2-seq-decaying", "K3-vec-loo"]


@pytest.mark.parametrize("seed", SEEDS)
def test_downstream_costs_match(seed):
    """Rao-Blackwellization: every score site's downstream cost (per particle, per batch
    element) equals TraceGraph_ELBO's on the same traces, and so do the gradients (both with the
    zero baseline of the probe)."""
    case = case_for(seed)
    model, _, desc = case.triple()
    config = CONFIGS[RB_CONFIGS[seed % len(RB_CONFIGS)]]
    tg, sf = make_pair(config, case)
    step = seed % 2
    got = {}
    grads = {}
    for label, elbo in [("tg", tg), ("sf", sf)]:
        probes = {}
        fresh(seed)
        elbo.loss_and_grads(model, probe_guide(case, probes), step)
        got[label], grads[label] = costs_of(probes, config["num_particles"]), param_grads()
    assert set(got["sf"]) == set(got["tg"]), desc
    for name, tg_costs in got["tg"].items():
        sf_costs = got["sf"][name]
        assert len(sf_costs) == len(tg_costs), f"{name}: calls {len(sf_costs)} != {len(tg_costs)}"
        for k, (a, b) in enumerate(zip(sf_costs, tg_costs, strict=True)):
            torch.testing.assert_close(
                a, b, rtol=1e-4, atol=1e-4, msg=f"downstream cost of {name} (call {k}): {desc}"
            )
    assert_grads_close(grads["sf"], grads["tg"], f"gradients with the zero baseline: {desc}")


COST_FN_SEEDS = SEEDS[:16]


@pytest.mark.parametrize("seed", COST_FN_SEEDS)
def test_downstream_costs_function_on_tracegraph_traces(seed):
    """The plugin's ``downstream_costs(model_trace, guide_trace)``, applied to the traces
    ``TraceGraph_ELBO`` draws (Pyro's own provenance tracking), gives the costs
    ``TraceGraph_ELBO`` uses on them. (Pyro's graph-based ``_compute_downstream_costs`` is not
    the reference: ``TraceGraph_ELBO`` 1.9.2 does not call it; it uses the coarser dense graph and
    raises ``KeyError`` on guide-side ``pyro.factor`` sites.)"""
    from pyro_reparam.estimators.score_elbo import downstream_costs

    case = case_for(seed)
    model, guide, desc = case.triple()
    step = seed % 2
    probes = {}
    fresh(seed)
    TraceGraph_ELBO().loss_and_grads(model, probe_guide(case, probes), step)
    expected = costs_of(probes, 1)
    fresh(seed)
    model_trace, guide_trace = TraceGraph_ELBO()._get_trace(model, guide, (step,), {})
    got = downstream_costs(model_trace, guide_trace)
    assert set(got) == set(expected), desc
    for name, (cost,) in expected.items():
        torch.testing.assert_close(
            torch.as_tensor(got[name]), cost, rtol=1e-4, atol=1e-4, msg=f"{name}: {desc}"
        )


LOO_SEEDS = SEEDS[:24]


@pytest.mark.parametrize("seed", LOO_SEEDS)
def test_loo_baseline_exact(seed):
    """``baseline="loo"`` with K vectorized particles is TraceGraph_ELBO with the baseline
    ``b_k = (sum_j c_j - c_k) / (K - 1)`` per datum, computed from TraceGraph's own downstream
    costs on the same traces: equal gradients."""
    case = case_for(seed)
    model, guide, desc = case.triple()
    k, n = 3, case.nesting
    kw = dict(num_particles=k, vectorize_particles=True, max_plate_nesting=n)
    probes = {}
    fresh(seed)
    TraceGraph_ELBO(**kw).loss_and_grads(model, probe_guide(case, probes), 0)
    pyro.clear_param_store()
    baselines = {}
    for name, (cost,) in costs_of(probes, k).items():
        assert cost.dim() == n + 1 and cost.shape[0] == k, (name, cost.shape)
        baselines[name] = (cost.sum(0, keepdim=True) - cost) / (k - 1)
    fresh(seed)
    TraceGraph_ELBO(**kw).loss_and_grads(
        model, case.guide_fn(baselines=lambda name: {"baseline_value": baselines[name]}), 0
    )
    expected = param_grads()
    fresh(seed)
    pr.ScoreFunctionELBO(baseline="loo", **kw).loss_and_grads(model, guide, 0)
    assert_grads_close(param_grads(), expected, f"leave-one-out gradients: {desc}")


DECAY_SEEDS = SEEDS[:12]
BETA = 0.9


@pytest.mark.parametrize("seed", DECAY_SEEDS)
def test_decaying_baseline_exact(seed):
    """``baseline="decaying"`` over three steps (subsample sizes changing) is TraceGraph_ELBO
    with ``baseline_value`` = the running average of the *earlier* steps' mean downstream
    costs (0 on a site's first step; then ``m_1``, then ``beta b + (1 - beta) m_t``; means over
    data and particles), computed from TraceGraph's own costs on the same traces."""
    case = case_for(seed)
    model, guide, desc = case.triple()
    vectorized = seed % 2 == 1
    k = 2 if vectorized else 1
    kw = dict(num_particles=k, vectorize_particles=vectorized)
    if vectorized:
        kw["max_plate_nesting"] = case.nesting
    sf = pr.ScoreFunctionELBO(baseline="decaying", baseline_beta=BETA, **kw)
    average: dict[str, torch.Tensor] = {}
    for step in range(3):
        rng = 1000 * seed + step
        probes = {}
        fresh(rng)
        TraceGraph_ELBO(**kw).loss_and_grads(model, probe_guide(case, probes), step)
        baselines = {}
        for name, costs in costs_of(probes, k).items():
            for cost in costs:  # one per particle drawn in sequence
                old = average.get(name)
                baselines.setdefault(name, []).append(
                    torch.zeros_like(cost) if old is None else old.expand_as(cost).clone()
                )
                mean = cost.mean()
                average[name] = mean if old is None else BETA * old + (1 - BETA) * mean
        queue = {name: iter(bs) for name, bs in baselines.items()}
        fresh(rng)
        TraceGraph_ELBO(**kw).loss_and_grads(
            model,
            case.guide_fn(baselines=lambda name, q=queue: {"baseline_value": next(q[name])}),
            step,
        )
        expected = param_grads()
        fresh(rng)
        sf.loss_and_grads(model, guide, step)
        assert_grads_close(param_grads(), expected, f"decaying baseline, step {step}: {desc}")


# ----------------------------------------------------------------------------- 3. parity
def outcome(fn):
    try:
        fn()
        return "accepted"
    except Exception as err:  # any rejection counts; the type is reported
        return f"rejected ({type(err).__name__}: {str(err).splitlines()[0][:100]})"


@pytest.mark.parametrize("kind", INVALID_KINDS + ACCEPTED_KINDS)
def test_pass_fail_parity(kind):
    """A case TraceGraph_ELBO rejects is rejected by ScoreFunctionELBO, and one it accepts is
    accepted, for single and vectorized particles; the routed ELBO agrees with TraceGraph_ELBO
    run with the plan's particles and nesting (``route`` itself refusing counts as rejecting,
    and then single-particle TraceGraph_ELBO must reject too)."""
    case = invalid_case(kind, 100 + 17 * (INVALID_KINDS + ACCEPTED_KINDS).index(kind))
    model, guide, desc = case.triple()
    delta = case.elbo_nesting_delta
    n = case.nesting + delta
    results = {}
    for label in ("K1-none", "K3-vec-loo"):
        config = CONFIGS[label]
        kw = elbo_kwargs(config, case, delta)
        if delta:
            kw["max_plate_nesting"] = n
        tg = TraceGraph_ELBO(**kw)
        sf = pr.ScoreFunctionELBO(baseline=config["baseline"], **kw)
        for name, elbo in [("TraceGraph", tg), ("ScoreFunction", sf)]:
            fresh(0)
            results[name, label] = outcome(lambda e=elbo: e.loss_and_grads(model, guide, 0))
    fresh(0)
    extra = {"max_plate_nesting": n} if delta else {}
    planned = outcome(lambda: results.setdefault("plan", pr.route(model, guide, 0, **extra)))
    if planned == "accepted":
        plan = results.pop("plan")
        kw = dict(
            num_particles=plan.num_particles,
            vectorize_particles=plan.vectorize_particles,
            max_plate_nesting=plan.max_plate_nesting,
        )
        fresh(0)
        results["TraceGraph", "plan"] = outcome(
            lambda: TraceGraph_ELBO(**kw).loss_and_grads(model, guide, 0)
        )
        fresh(0)
        results["routed", "plan"] = outcome(lambda: plan.elbo().loss_and_grads(model, guide, 0))
    else:
        results["TraceGraph", "plan"] = results["TraceGraph", "K1-none"]
        results["routed", "plan"] = planned
    reference = results["TraceGraph", "K1-none"]
    expect_ok = kind in ACCEPTED_KINDS
    assert reference.startswith("accepted") == expect_ok, f"{kind}: {reference}\n{desc}"
    for label in ("K1-none", "K3-vec-loo"):
        ours, theirs = results["ScoreFunction", label], results["TraceGraph", label]
        assert ours.split()[0] == theirs.split()[0], (
            f"{kind}, {label}: ScoreFunctionELBO {ours}, TraceGraph_ELBO {theirs}\n{desc}"
        )
    ours, theirs = results["routed", "plan"], results["TraceGraph", "plan"]
    assert ours.split()[0] == theirs.split()[0], (
        f"{kind}: routed {ours}, TraceGraph_ELBO with the plan's settings {theirs}\n{desc}"
    )


# ----------------------------------------------------------------------------- 2. unbiased
def _enumerate_discrete(msg):
    fn = msg["fn"]
    if (
        msg["type"] == "sample"
        and not msg["is_observed"]
        and not isinstance(fn, _Subsample)
        and not getattr(fn, "has_rsample", False)
    ):
        return {"enumerate": "parallel"}
    return {}


def _draws(make_elbo, model, guide, batches, seed, cycle_steps=True):
    fresh(seed)
    elbo = make_elbo()
    rows, losses = [], []
    for b in range(batches):
        losses.append(elbo.loss_and_grads(model, guide, b if cycle_steps else 0))
        rows.append(param_grads())
    return rows, losses


def _flatten(rows, shapes):
    names = sorted(shapes)
    return torch.stack(
        [
            torch.cat(
                [r[n].reshape(-1) if n in r else torch.zeros(shapes[n]).reshape(-1) for n in names]
            )
            for r in rows
        ]
    )


_REFERENCE: dict = {}


def exact_reference(seed):
    """The exact gradient of the full-data ELBO (every discrete guide site enumerated;
    continuous sites by many particles, with their Monte Carlo standard error), flattened over
    the case's parameters, with the loss (negative ELBO) appended as the last coordinate."""
    if seed in _REFERENCE:
        return _REFERENCE[seed]
    case = case_for(seed, small=True)
    model = case.model_fn(full=True, enum_safe=True)
    guide = poutine.infer_config(case.guide_fn(full=True, enum_safe=True), _enumerate_discrete)
    continuous = any(lat.family in ("normal", "gamma") for lat in case.latents())
    m, r = (256, 8) if continuous else (1, 1)
    rows, losses = _draws(
        lambda: TraceEnum_ELBO(
            max_plate_nesting=case.nesting, num_particles=m, vectorize_particles=m > 1
        ),
        model,
        guide,
        r,
        seed,
        cycle_steps=False,
    )
    shapes = {k: v.shape for k, v in rows[0].items()}
    flat = torch.cat([_flatten(rows, shapes), torch.tensor(losses)[:, None]], 1)
    se = flat.std(0) / math.sqrt(r) if r > 1 else torch.zeros(flat.shape[1])
    _REFERENCE[seed] = (shapes, flat.mean(0), se)
    return _REFERENCE[seed]


GRAD_ELBOS = {
    "TraceGraph_ELBO": lambda n: TraceGraph_ELBO(
        num_particles=32, vectorize_particles=True, max_plate_nesting=n
    ),
    "ScoreFunctionELBO-decaying": lambda n: pr.ScoreFunctionELBO(
        num_particles=32, baseline="decaying", vectorize_particles=True, max_plate_nesting=n
    ),
    "ScoreFunctionELBO-loo": lambda n: pr.ScoreFunctionELBO(
        num_particles=16, baseline="loo", vectorize_particles=True, max_plate_nesting=n
    ),
    "routed": None,
}
BATCHES = 24  # per round; rounds until max |exact gradient| / se >= MIN_POWER
MAX_BATCHES = 80
MIN_POWER = 8.0
ALPHA = 1e-3  # per test, Bonferroni over coordinates


@pytest.mark.parametrize("which", list(GRAD_ELBOS))
@pytest.mark.parametrize("seed", GRAD_SEEDS)
def test_gradient_unbiased(seed, which):
    """The mean gradient (and loss) of independent steps (subsample sizes cycling) is within
    t-bounds (Bonferroni over coordinates) of the exact full-data ELBO gradient (and negative
    ELBO), with enough steps that the largest coordinate is at least MIN_POWER standard errors
    from zero."""
    case = case_for(seed, small=True)
    model, guide, desc = case.triple()
    shapes, ref, ref_se = exact_reference(seed)
    if which == "routed":
        fresh(seed)
        plan = pr.route(model, guide, 0)

        def make():
            return plan.elbo()

        desc = f"{plan}\n{desc}"
    else:

        def make():
            return GRAD_ELBOS[which](case.nesting)

    fresh(seed + 1)
    elbo, rows, losses = make(), [], []
    while True:  # batches of draws until the test has power (s.e. well below the gradient)
        for _ in range(BATCHES):
            losses.append(elbo.loss_and_grads(model, guide, len(rows)))
            rows.append(param_grads())
        flat = torch.cat([_flatten(rows, shapes), torch.tensor(losses)[:, None]], 1)
        mean, se = flat.mean(0), flat.std(0) / math.sqrt(len(rows))
        total = (se**2 + ref_se**2).sqrt()
        random_coords = total > 0
        if not random_coords.any():  # an exact estimator (enumeration, no subsampling)
            power = math.inf
            break
        power = (ref[random_coords].abs() / total[random_coords]).max()
        if power >= MIN_POWER or len(rows) >= MAX_BATCHES:
            break
    exact = ~random_coords
    torch.testing.assert_close(mean[exact], ref[exact], rtol=1e-4, atol=1e-4)
    d = int(random_coords.sum())
    k = stats.t.ppf(1 - ALPHA / (2 * max(d, 1)), len(rows) - 1)
    z = (mean - ref)[random_coords] / total[random_coords]
    worst = int(z.abs().argmax()) if d else 0
    coordinate = "the loss" if worst == d - 1 and random_coords[-1] else f"coordinate {worst}"
    assert d == 0 or z.abs().max() <= k, (
        f"{which}: |mean - exact| / se = {z.abs().max():.2f} > {k:.2f} at {coordinate} "
        f"(mean {mean[random_coords][worst]:.4f}, exact {ref[random_coords][worst]:.4f}, "
        f"se {total[random_coords][worst]:.4f})\n{desc}"
    )
    # the test has power: the largest gradient coordinates are far above their standard error
    assert power >= MIN_POWER, f"weak test: max |gradient| / se = {power:.1f}\n{desc}"
