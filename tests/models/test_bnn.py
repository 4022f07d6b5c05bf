"""BayesianMLP: an honest model, the three estimators of one ELBO (direct and under Pyro's
tracing), routing, scaling, fit/predict, calibration."""

import math
from contextlib import nullcontext

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive

import pyro_reparam as pr
from pyro_reparam.models import BayesianMLP, expected_calibration_error, interval_coverage
from pyro_reparam.models.bnn.elbo import HANDLERS


def _toy(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g) * 6 - 3
    return x, torch.sin(x[:, 0]) + 0.1 * torch.randn(n, generator=g)


def _bnn(guide, seed=0):
    torch.manual_seed(seed)
    bnn = BayesianMLP(1, 1, (16,), guide=guide, init_scale=0.3)
    return bnn


GUIDES = ("meanfield", "local", "flipout")


@pytest.mark.parametrize("guide", GUIDES)
def test_routing_sees_pathwise_weights_and_the_guide_no_private_keys(guide):
    """The estimator lives in the ELBO, not in the model or guide: every weight is a plain
    pathwise Normal site for the router."""
    x, y = _toy()
    bnn = _bnn(guide)
    plan = pr.route(bnn.model, bnn.guide, x, y)
    for l in range(2):
        assert plan[f"layer{l}.weight"].estimator == plan[f"layer{l}.bias"].estimator == "pathwise"
    trace = poutine.trace(bnn.guide).get_trace(x, y)
    assert all(site["infer"] == {} for _, site in trace.iter_stochastic_nodes())
    shown = {"meanfield": "-", "local": "local reparameterization", "flipout": "flipout"}[guide]
    plan = bnn.route(x, y)
    assert all(s.variance_reduction == shown for s in plan.sites.values())
    assert plan.elbo_class == "TraceMeanField_ELBO"


def _weights(bnn, value, last_bias):
    """Every weight and bias ``value``, the last bias ``last_bias``."""
    sites = {}
    for l, (i, o) in enumerate(zip(bnn.sizes[:-1], bnn.sizes[1:], strict=True)):
        sites[f"layer{l}.weight"] = torch.full((o, i), value)
        sites[f"layer{l}.bias"] = torch.full((o,), value)
    sites[f"layer{len(bnn.sizes) - 2}.bias"] = torch.full((bnn.sizes[-1],), last_bias)
    return sites


@pytest.mark.parametrize("guide", GUIDES)
def test_the_model_uses_the_weights_it_is_given(guide):
    """Conditioned on all-zero weights and a last bias c, the output is c everywhere; on weights
    of 100 it is not; also inside the estimator's handler (conditioned sites pass through)."""
    x, _ = _toy(8)
    bnn = BayesianMLP(1, 1, (4,), guide=guide, noise="homoscedastic")

    def mean_output(weights):
        trace = poutine.trace(poutine.condition(bnn.model, weights)).get_trace(x)
        return trace.nodes["y"]["fn"].mean

    for handler in (HANDLERS[guide], None):
        with handler() if handler else nullcontext():
            zero = mean_output(_weights(bnn, 0.0, 0.7))
            hundred = mean_output(_weights(bnn, 100.0, 100.0))
        assert torch.equal(zero, torch.full((8,), 0.7))
        assert (hundred - zero).abs().min() > 1.0


@pytest.mark.parametrize("guide", GUIDES)
@pytest.mark.parametrize("parallel", [False, True])
def test_predictive_uses_the_posterior_samples(guide, parallel):
    """Zero weights and a known last bias per draw: each draw's y is that bias (noise 1e-9)."""
    x, _ = _toy(8)
    bnn = BayesianMLP(1, 1, (4,), guide=guide, noise="homoscedastic")
    with torch.no_grad():
        bnn.log_noise.fill_(-20.0)
    biases = torch.tensor([0.5, -1.0, 2.0])
    draws = [_weights(bnn, 0.0, float(c)) for c in biases]
    samples = {name: torch.stack([d[name] for d in draws]) for name in draws[0]}
    predictive = Predictive(bnn.model, posterior_samples=samples, parallel=parallel)
    y = predictive(x)["y"].reshape(3, 8)
    torch.testing.assert_close(y, biases[:, None].expand(3, 8), atol=1e-6, rtol=0)


def test_the_three_estimators_estimate_the_same_elbo():
    """Same variational parameters: E[loss] agrees across estimators within Monte Carlo error."""
    x, y = _toy(32)
    means = {}
    for guide in GUIDES:
        pyro.clear_param_store()
        bnn = _bnn("meanfield")  # same parameters for all three
        bnn.guide_kind = guide
        elbo = bnn.elbo(traced=True)
        pyro.set_rng_seed(1)
        losses = torch.tensor([elbo.loss(bnn.model, bnn.guide, x, y) for _ in range(600)])
        means[guide] = (losses.mean().item(), losses.std().item() / math.sqrt(600))
    ref, ref_se = means["meanfield"]
    for guide in ("local", "flipout"):
        m, se = means[guide]
        assert abs(m - ref) < 4 * math.hypot(se, ref_se), (guide, means)


def test_direct_elbo_equals_pyros_traced_elbo():
    """Weight sampling draws the weights in the guide's order, so with one seed the direct ELBO
    and TraceMeanField_ELBO see the same draws: equal losses and equal gradients."""
    x, y = _toy(32)
    bnn = _bnn("meanfield")
    results = []
    for elbo in (bnn.elbo(traced=True), bnn.elbo()):
        pyro.set_rng_seed(3)
        bnn.zero_grad()
        loss = elbo.loss_and_grads(bnn.model, bnn.guide, x, y, num_data=320)
        results.append((loss, [p.grad.clone() for p in bnn.parameters() if p.grad is not None]))
    (traced, g_traced), (direct, g_direct) = results
    assert direct == pytest.approx(traced, rel=1e-5)
    assert len(g_direct) == len(g_traced) > 0
    for a, b in zip(g_direct, g_traced, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _loss_and_gradient_draws(bnn, elbo, x, y, draws):
    """``draws`` independent ``(loss, flat gradient)`` of ``elbo`` at the current parameters."""
    params = [p for name, p in bnn.named_parameters() if name != "log_noise"]
    losses, grads = [], []
    for _ in range(draws):
        bnn.zero_grad()
        losses.append(elbo.loss_and_grads(bnn.model, bnn.guide, x, y, num_data=320))
        grads.append(torch.cat([p.grad.flatten() for p in params]))
    return torch.tensor(losses), torch.stack(grads)


@pytest.mark.parametrize("guide", ["local", "flipout"])
def test_direct_elbo_matches_the_handled_traced_elbo_in_expectation_and_gradient(guide):
    """The direct ELBO and Pyro's TraceMeanField_ELBO under the estimator's handler: mean loss
    within 4 Monte Carlo s.e.; mean gradients with a chi-square statistic
    ``sum_j (mean_a - mean_b)_j^2 / se_j^2`` within 5 sd of its expectation (the number of
    coordinates), the s.e. well below the gradient's size. (A homoscedastic network: at this
    initialization the learned-noise output makes the gradients heavy-tailed. Weight sampling
    is checked draw by draw above.)"""
    x, y = _toy(32)
    torch.manual_seed(0)
    bnn = BayesianMLP(1, 1, (16,), guide=guide, init_scale=0.3, noise="homoscedastic")
    n = 300
    pyro.set_rng_seed(4)
    (la, ga), (lb, gb) = (_loss_and_gradient_draws(bnn, elbo, x, y, n)
                          for elbo in (bnn.elbo(traced=True), bnn.elbo()))  # fmt: skip
    loss_se = math.hypot(la.std().item(), lb.std().item()) / math.sqrt(n)
    assert abs(la.mean().item() - lb.mean().item()) < 4 * loss_se
    se2 = (ga.var(0) + gb.var(0)) / n
    assert se2.sum().sqrt() < 0.1 * ga.mean(0).norm()
    chi2 = ((ga.mean(0) - gb.mean(0)).pow(2) / se2).sum().item()
    d = ga.shape[1]
    assert chi2 < d + 5 * math.sqrt(2 * d), (chi2, d)


def test_direct_elbo_needs_targets():
    x, _ = _toy(8)
    bnn = _bnn("local")
    with pytest.raises(ValueError, match="needs the observed targets y"):
        bnn.elbo().loss(bnn.model, bnn.guide, x)


@pytest.mark.parametrize("traced", [False, True])
def test_local_reparameterization_and_flipout_lower_gradient_variance(traced):
    """tr Cov of the first layer's mean gradient, 200 draws on 64 points (measured: local
    ~0.02x, flipout ~0.14x weight sampling's, direct and traced alike). A fresh param store per
    network: ``pyro.module`` would otherwise hand the new network the old one's parameters."""
    x, y = _toy(64)
    stats = {}
    for guide in GUIDES:
        pyro.clear_param_store()
        torch.manual_seed(0)
        bnn = BayesianMLP(1, 1, (16,), guide=guide, init_scale=0.3, noise="homoscedastic")
        pyro.set_rng_seed(2)
        elbo = bnn.elbo(traced=traced)
        stats[guide] = pr.gradient_variance(bnn.model, bnn.guide, elbo, x, y, num_draws=200,
                                            params="bnn$$$locs.0").trace_cov  # fmt: skip
    assert stats["meanfield"] > 0
    assert stats["local"] < 0.1 * stats["meanfield"], stats
    assert stats["flipout"] < 0.5 * stats["meanfield"], stats


def test_minibatch_scaling():
    x, y = _toy(16)
    bnn = _bnn("local")
    tr = poutine.trace(poutine.replay(bnn.model, trace=poutine.trace(bnn.guide).get_trace(x, y)))
    t = tr.get_trace(x, y, num_data=160)
    assert t.nodes["y"]["scale"] == pytest.approx(10.0)
    assert t.nodes["layer0.weight"]["scale"] == 1.0


def test_fit_predict_recovers_a_smooth_function_with_calibrated_bands():
    x, y = _toy(200)
    torch.manual_seed(0)
    bnn = BayesianMLP(1, 1, (32,))
    h = bnn.fit(x, y, epochs=300, batch_size=64, lr=0.02)
    assert {"expected_log_likelihood", "kl"} <= set(h.records[-1])
    assert h.records[-1]["kl"] > 0
    xt, yt = _toy(200, seed=1)
    p = bnn.predict(xt)
    assert ((p["mean"] - torch.sin(xt[:, 0])) ** 2).mean().sqrt() < 0.15
    coverage = interval_coverage(yt, p["quantiles"][0], p["quantiles"][2])
    assert 0.8 <= coverage <= 0.99
    assert bnn.log_predictive_density(xt, yt).mean() > 0  # noise 0.1: density well above 1


def test_log_predictive_density_subtracts_the_log_jacobian_once_per_point():
    """Two outputs: ``log p(y) = log p_std(y_std) - sum_d log y_std_d``, shape ``(B,)``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 2, generator=g)
    y = torch.stack([3 * x[:, 0], 0.1 * x[:, 1]], 1) + 0.05 * torch.randn(40, 2, generator=g)
    torch.manual_seed(0)
    bnn = BayesianMLP(2, 2, (8,))
    bnn.fit(x, y, epochs=2, batch_size=40)
    pyro.set_rng_seed(1)
    lpd = bnn.log_predictive_density(x, y, num_samples=50)
    pyro.set_rng_seed(1)
    standardized = bnn.log_predictive(*bnn.transform(x, y), num_samples=50)
    assert lpd.shape == (40,)
    torch.testing.assert_close(lpd, standardized - torch.log(bnn.y_std).sum())


def test_classification_on_digits():
    from pyro_reparam.apps.data import load_digits

    tr, te = load_digits("train"), load_digits("test")
    torch.manual_seed(0)
    bnn = BayesianMLP(64, 10, (32,), task="classification")
    bnn.fit(tr.images, tr.labels, epochs=30, batch_size=128, lr=0.01)
    probs = bnn.predict(te.images)["probs"]
    assert (probs.argmax(-1) == te.labels).float().mean() > 0.85
    assert 0 <= expected_calibration_error(probs, te.labels) < 0.15


def test_calibration_helpers():
    y = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert interval_coverage(y, y - 0.5, y + 0.5) == 1.0
    assert interval_coverage(y, y + 0.1, y + 0.5) == 0.0
    labels = torch.tensor([0, 0, 0, 0])
    confident_right = torch.tensor([[0.9, 0.1]] * 4)
    assert expected_calibration_error(confident_right, labels) == pytest.approx(0.1)
    overconfident = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.1, 0.9]])
    assert expected_calibration_error(overconfident, labels) == pytest.approx(0.4)


def test_bad_options():
    with pytest.raises(ValueError, match="guide must be one of"):
        BayesianMLP(1, guide="bayes-by-backprop")
    with pytest.raises(ValueError, match="prior must be"):
        BayesianMLP(1, prior=-1.0)
    with pytest.raises(ValueError, match="heteroscedastic"):
        BayesianMLP(1, task="classification", noise="heteroscedastic")


def test_fit_names_a_bad_device():
    x, y = _toy(16)
    with pytest.raises(ValueError, match="device="):
        BayesianMLP(1, 1, (4,)).fit(x, y, epochs=1, device="gpu0")


@pytest.mark.cuda
def test_fit_and_predict_on_cuda():
    x, y = _toy(64)
    torch.manual_seed(0)
    bnn = BayesianMLP(1, 1, (16,))
    h = bnn.fit(x, y, epochs=3, batch_size=32, device="cuda")
    assert all(math.isfinite(v) for v in h.train_elbo)
    p = bnn.predict(x)  # CPU inputs are moved to the model's device
    assert p["mean"].device.type == "cuda" and torch.isfinite(p["mean"]).all()
    assert bnn.log_predictive_density(x, y).device.type == "cuda"
    bnn.to("cpu")
    assert bnn.predict(x)["mean"].device.type == "cpu"


@pytest.mark.cuda
@pytest.mark.parametrize("guide", GUIDES)
def test_traced_and_direct_elbos_on_cuda(guide):
    """Both ELBOs of every estimator step on CUDA: finite loss, gradients on the device."""
    x, y = (t.cuda() for t in _toy(32))
    bnn = _bnn(guide).cuda()
    for elbo in (bnn.elbo(traced=True), bnn.elbo()):
        bnn.zero_grad()
        loss = elbo.loss_and_grads(bnn.model, bnn.guide, x, y, num_data=320)
        assert math.isfinite(loss)
        assert bnn.locs[0].grad.device.type == "cuda"
