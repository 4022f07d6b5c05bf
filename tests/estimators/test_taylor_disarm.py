"""TaylorDisARM_ELBO: unbiased against an exact ELBO where the Taylor control variate is not
exact, at the first step (coefficient 1), at a fixed coefficient and at the one learned from
earlier steps; of much lower variance than DisARM where ``f`` is smooth; its state, its cost and
its fallback.

N independent copies side by side (as in test_disarm.py). Copy n: ``z ~ Bern(P_Z)`` (3
coordinates, one site), ``w ~ Bern(0.4)``, ``y ~ N(0, 1)``,
``x ~ N(2 tanh(z . V + 1.2 w - 0.5) + y, S)`` with ``x = 1.3``; guide ``Bern(sigma(a_z))``,
``Bern(sigma(a_w))``, ``N(c, SY)``. The exact ELBO sums the 16 states of ``(z, w)`` and is closed
form in ``y``. ``tanh`` makes ``f`` non-quadratic in ``z``, so the midpoint rule is not exact
and a control variate that broke the swap symmetry would show its bias.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_reparam as pr
from pyro_reparam.estimators import DisARM_ELBO, TaylorDisARM_ELBO

N = 20000
X = 1.3
S = 0.6
SY = 0.7
P_Z = torch.tensor([0.3, 0.6, 0.5])
P_W = 0.4
V = torch.tensor([1.5, -1.0, 2.0])
INIT = torch.tensor([-1.5, 1.5, -1.0, 1.2, 0.2])  # a_z (3), a_w, c


def loc(z, w):
    return 2 * torch.tanh(z @ V + 1.2 * w - 0.5)


def model(n=N):
    with pyro.plate("copies", n):
        z = pyro.sample("z", dist.Bernoulli(P_Z).to_event(1))
        w = pyro.sample("w", dist.Bernoulli(P_W))
        y = pyro.sample("y", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(loc(z, w) + y, S), obs=torch.full((n,), X))


def guide(n=N):
    a = pyro.param("a", INIT.expand(n, 5).clone())
    with pyro.plate("copies", n):
        pyro.sample("z", dist.Bernoulli(logits=a[:, :3]).to_event(1))
        pyro.sample("w", dist.Bernoulli(logits=a[:, 3]))
        pyro.sample("y", dist.Normal(a[:, 4], SY))


def exact_elbo(a):
    bits = torch.tensor([[(k >> i) & 1 for i in range(4)] for k in range(16)], dtype=torch.float)
    z, w = bits[:, :3], bits[:, 3]
    log_q = dist.Bernoulli(logits=a[:3]).log_prob(z).sum(-1) + dist.Bernoulli(logits=a[3]).log_prob(
        w
    )
    log_p = dist.Bernoulli(P_Z).log_prob(z).sum(-1) + dist.Bernoulli(P_W).log_prob(w)
    c = a[4]
    lik = -0.5 * math.log(2 * math.pi * S**2) - ((X - loc(z, w) - c) ** 2 + SY**2) / (2 * S**2)
    prior_y = -0.5 * math.log(2 * math.pi) - 0.5 * (c**2 + SY**2)
    entropy_y = 0.5 * math.log(2 * math.pi * math.e * SY**2)
    return (log_q.exp() * (log_p + lik - log_q)).sum() + prior_y + entropy_y


def truth():
    a = INIT.clone().requires_grad_()
    value = exact_elbo(a)
    (grad,) = torch.autograd.grad(value, [a])
    return value.detach(), grad


def draws(elbo):
    """``(loss, per-copy gradients of the ELBO)`` of one step over the N copies."""
    loss = elbo.loss_and_grads(model, guide)
    grad = -pyro.param("a").grad.clone()
    pyro.param("a").grad = None
    return loss, grad


def warm(elbo, steps):
    for _ in range(steps):
        draws(elbo)
    return elbo


CASES = {
    "first step (a = 1)": lambda: TaylorDisARM_ELBO(num_pairs=1),
    "fixed a = 0.5": lambda: TaylorDisARM_ELBO(num_pairs=1, coefficient=0.5),
    "learned a, 2 pairs": lambda: warm(TaylorDisARM_ELBO(num_pairs=2), 3),
}


@pytest.mark.parametrize("case", CASES)
def test_unbiased_against_the_exact_elbo(case):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    value, exact = truth()
    elbo = CASES[case]()
    loss, g = draws(elbo)
    mean, se = g.mean(0), g.std(0) / math.sqrt(N)
    assert (4 * se[:4]).norm() < 0.25 * exact[:4].norm(), (se, exact)  # the logits' part
    assert ((mean - exact).abs() <= 4 * se).all(), (mean, exact, se)
    # the loss averages 2P draws of f per copy, whose variance is at most one draw's
    assert abs(-loss / N - value.item()) <= 4 * (f_draws().var() / N).sqrt().item()


def f_draws():
    """``f = log p(x, z) - log q(z)`` of one independent draw per copy."""
    pyro.clear_param_store()
    guide_trace = pyro.poutine.trace(guide).get_trace()
    model_trace = pyro.poutine.trace(pyro.poutine.replay(model, trace=guide_trace)).get_trace()
    f = 0.0
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.nodes.values():
            if site["type"] == "sample":
                f = f + sign * site["fn"].log_prob(site["value"]).detach()
    return f


def test_the_coefficient_never_sees_the_current_draw():
    """One copy per step and ``beta = 0``: the coefficient is the previous step's ratio, which
    one draw moves a lot. Were it taken from the current draw, it would correlate with that
    draw's signal and bias the mean (|z| of 12-18 on the logits over 2000 steps, about 7 over
    the 500 here); from the previous draw it is independent of it."""
    pyro.clear_param_store()
    pyro.set_rng_seed(6)
    _, exact = truth()
    elbo = TaylorDisARM_ELBO(num_pairs=1, beta=0.0)
    steps = []
    for _ in range(500):
        elbo.loss_and_grads(model, guide, 1)
        steps.append(-pyro.param("a").grad[0].clone())
        pyro.param("a").grad = None
    g = torch.stack(steps)
    z = (g.mean(0) - exact) / (g.std(0) / math.sqrt(len(g)))
    assert (z.abs() <= 4).all(), z


def test_the_learned_coefficient_comes_from_earlier_steps():
    pyro.clear_param_store()
    elbo = TaylorDisARM_ELBO(num_pairs=1)
    assert elbo.current_coefficient() == 1.0 and elbo.state_dict() == {}
    draws(elbo)
    first = elbo.current_coefficient()
    assert first != 1.0 and 0.0 < first < 1.5
    draws(elbo)
    assert elbo.current_coefficient() != first  # a decaying average, updated each step
    state = elbo.state_dict()
    other = TaylorDisARM_ELBO(num_pairs=1)
    other.load_state_dict(state)
    assert other.current_coefficient() == elbo.current_coefficient()
    with pytest.raises(ValueError, match="unexpected keys"):
        other.load_state_dict({"alpha": torch.tensor(1.0)})


L_WIDE = 16
V_WIDE = torch.linspace(-1.0, 1.0, L_WIDE)


def wide_model(n=2000):
    with pyro.plate("copies", n):
        z = pyro.sample("z", dist.Bernoulli(0.5 * torch.ones(L_WIDE)).to_event(1))
        loc = 3 * torch.tanh(0.3 * z @ V_WIDE)
        pyro.sample("x", dist.Normal(loc, S), obs=torch.full((n,), X))


def wide_guide(n=2000):
    a = pyro.param("wide_a", torch.linspace(-1.0, 1.0, L_WIDE).expand(n, L_WIDE).clone())
    with pyro.plate("copies", n):
        pyro.sample("z", dist.Bernoulli(logits=a).to_event(1))


def test_much_lower_variance_than_disarm_where_f_is_smooth_in_many_coordinates():
    """One pair of TaylorDisARM (3 evaluations) against two pairs of DisARM (4 evaluations) on
    16 coordinates entering ``f`` through a smooth function of their sum: most of DisARM's
    variance is the other coordinates' share of ``f(b) - f(b~)``, which the control variate
    removes."""
    variances = {}
    for elbo in (warm_wide(TaylorDisARM_ELBO(num_pairs=1)), DisARM_ELBO(num_pairs=2)):
        pyro.clear_param_store()
        pyro.set_rng_seed(1)
        elbo.loss_and_grads(wide_model, wide_guide)
        variances[type(elbo).__name__] = pyro.param("wide_a").grad.var(0).sum()
    ratio = variances["TaylorDisARM_ELBO"] / variances["DisARM_ELBO"]
    print(f"tr var of the logits gradient, TaylorDisARM(1 pair) / DisARM(2 pairs): {ratio:.3f}")
    assert ratio < 0.6  # about 0.42; plain DisARM with one pair would be about 2


def warm_wide(elbo):
    pyro.clear_param_store()
    for _ in range(3):
        elbo.loss_and_grads(wide_model, wide_guide)
    return elbo


def test_cost_and_options():
    elbo = TaylorDisARM_ELBO(num_pairs=2)
    assert elbo.num_particles == 4 and elbo.evaluations_per_draw == 6
    pyro.clear_param_store()
    stats = pr.gradient_variance(model, guide, elbo, 50, num_draws=3)
    assert stats.evaluations_per_draw == 6
    counts = pr.compare_estimators(model, guide, {"taylor": TaylorDisARM_ELBO(num_pairs=1),
                                                 "disarm": DisARM_ELBO(num_pairs=1)},
                                   50, evaluations=12)  # fmt: skip
    assert (counts["taylor"].num_draws, counts["disarm"].num_draws) == (4, 6)  # equal budgets
    for bad in ("auto", float("nan"), True):
        with pytest.raises(ValueError, match="coefficient must be a finite number"):
            TaylorDisARM_ELBO(coefficient=bad)
    with pytest.raises(ValueError, match="TaylorDisARM_ELBO: num_pairs"):
        TaylorDisARM_ELBO(num_pairs=0)
    with pytest.raises(ValueError, match="beta"):
        TaylorDisARM_ELBO(beta=1.5)


def test_a_model_that_cannot_be_evaluated_at_the_midpoint_falls_back_to_disarm():
    """A prior that validates its values whatever Pyro's setting refuses z = 1/2: the step
    warns once and is plain DisARM (the same draws, so the same gradients)."""
    strict = dist.Bernoulli(P_Z, validate_args=True).to_event(1)

    def strict_model(n=N):
        with pyro.plate("copies", n):
            z = pyro.sample("z", strict.expand([n]))
            w = pyro.sample("w", dist.Bernoulli(P_W))
            y = pyro.sample("y", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(loc(z, w) + y, S), obs=torch.full((n,), X))

    grads = {}
    for make in (lambda: TaylorDisARM_ELBO(num_pairs=1), lambda: DisARM_ELBO(num_pairs=1)):
        pyro.clear_param_store()
        elbo = make()
        elbo.loss(strict_model, guide, 200)  # settle the guessed plate nesting
        pyro.set_rng_seed(3)
        if isinstance(elbo, TaylorDisARM_ELBO):
            with pytest.warns(RuntimeWarning, match="could not be evaluated at the pairs'"):
                elbo.loss_and_grads(strict_model, guide, 200)
            assert any("plain DisARM" in note for note in elbo.notes)
        else:
            elbo.loss_and_grads(strict_model, guide, 200)
        grads[type(elbo).__name__] = pyro.param("a").grad.clone()
    torch.testing.assert_close(grads["TaylorDisARM_ELBO"], grads["DisARM_ELBO"])


def test_a_subsampled_plate_is_evaluated_at_the_pairs_own_rows(loss_agrees, svi_steps):
    """With a subsampled data plate the midpoint run must replay the pairs' rows. Here ``f`` is
    quadratic in ``z`` (``x ~ N(sum z - 2, 1)``, ``q = p = Bern(1/2)``): the pair always
    differs, the midpoint rule is exact, and with ``a = 1`` every logit of a sampled row gets
    exactly ``scale * p(1 - p) * d f / d z_i (m) = 5 * x / 4`` (``m = 1/2``, ``sum m = 2``).
    Rows from another subsample would give another ``x``."""
    data = torch.randn(50)
    rows = []

    def sub_model():
        with pyro.plate("data", 50, subsample_size=10) as idx:
            z = pyro.sample("z", dist.Bernoulli(0.5).expand([10, 4]).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1) - 2.0, 1.0), obs=data[idx])

    def sub_guide():
        a = pyro.param("sub_a", torch.zeros(50, 4))
        with pyro.plate("data", 50, subsample_size=10) as idx:
            rows.append(idx)
            pyro.sample("z", dist.Bernoulli(logits=a[idx]).to_event(1))

    pyro.clear_param_store()
    elbo = TaylorDisARM_ELBO(num_pairs=1, coefficient=1.0)
    loss_agrees(elbo, sub_model, sub_guide, seed=2)
    svi_steps(elbo, sub_model, sub_guide)
    pyro.clear_param_store()
    rows.clear()
    elbo.loss_and_grads(sub_model, sub_guide)
    main, midpoint = rows  # the pairs' guide run, then the midpoint's
    assert torch.equal(main, midpoint)
    g = -pyro.param("sub_a").grad[main]
    torch.testing.assert_close(g, (1.25 * data[main]).unsqueeze(-1).expand(10, 4))


RESUMED = {
    "Taylor": lambda: TaylorDisARM_ELBO(num_pairs=1),
    "DisARM": lambda: DisARM_ELBO(num_pairs=1),
}


@pytest.mark.parametrize("make", RESUMED.values(), ids=RESUMED.keys())
def test_a_resumed_fit_equals_the_uninterrupted_one(tmp_path, make):
    """The coefficient's moments are the ELBO's state: ``fit`` checkpoints them, and a run
    stopped after 2 of 4 epochs and resumed with a fresh ELBO ends where the whole run ends.
    The fresh ELBO guesses the plate nesting again; the guess must not draw from the random
    streams the steps draw from (it did, for every coupled ELBO, until this test)."""
    x = torch.randn(48) + 1.0

    def fit_model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(0.5 * torch.ones(4)).to_event(1))
            pyro.sample("x", dist.Normal(torch.tanh(z.sum(-1) - 2.0), 0.5), obs=x)

    def fit_guide(x):
        w = pyro.param("w", torch.zeros(4))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=w * x.unsqueeze(-1)).to_event(1))

    def run(epochs, directory, resume=False):
        pyro.clear_param_store()
        elbo = make()
        pr.fit(fit_model, fit_guide, (x,), elbo=elbo, optim=pyro.optim.Adam({"lr": 0.05}),
               epochs=epochs, batch_size=16, seed=3, checkpoint_dir=directory, resume=resume,
               progress=False, log=lambda _m: None)  # fmt: skip
        return pyro.param("w").detach().clone(), getattr(elbo, "state_dict", dict)()

    whole, whole_state = run(4, tmp_path / "whole")
    run(2, tmp_path / "cut")
    resumed, resumed_state = run(4, tmp_path / "cut", resume=True)
    torch.testing.assert_close(resumed, whole)
    torch.testing.assert_close(resumed_state, whole_state)
    if whole_state:
        assert whole_state["coefficient.moments"][2] == 4 * 3  # 12 steps counted
