"""BayesianMLP: the three estimators of one ELBO, routing, scaling, fit/predict, calibration."""

import math

import pyro
import pytest
import torch
from pyro import poutine

import pyro_reparam as pr
from pyro_reparam.models import BayesianMLP, expected_calibration_error, interval_coverage


def _toy(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g) * 6 - 3
    return x, torch.sin(x[:, 0]) + 0.1 * torch.randn(n, generator=g)


def _bnn(guide, seed=0):
    torch.manual_seed(seed)
    bnn = BayesianMLP(1, 1, (16,), guide=guide, init_scale=0.3)
    return bnn


@pytest.mark.parametrize(
    ("guide", "vr"),
    [("meanfield", "-"), ("local", "local reparameterization"), ("flipout", "flipout")],
)
def test_routing_table_names_the_estimator(guide, vr):
    x, y = _toy()
    bnn = _bnn(guide)
    plan = pr.route(bnn.model, bnn.guide, x, y)
    assert plan["layer0.weight"].estimator == "pathwise"
    assert plan["layer0.weight"].variance_reduction == vr
    assert vr.split()[0] in str(plan) or guide == "meanfield"


def test_the_three_estimators_estimate_the_same_elbo():
    """Same variational parameters: E[loss] agrees across estimators within Monte Carlo error."""
    x, y = _toy(32)
    means = {}
    for guide in ("meanfield", "local", "flipout"):
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


def test_direct_elbo_agrees_in_expectation_for_local_and_flipout():
    x, y = _toy(32)
    for guide in ("local", "flipout"):
        bnn = _bnn(guide)
        means = []
        for elbo in (bnn.elbo(traced=True), bnn.elbo()):
            pyro.set_rng_seed(4)
            losses = torch.tensor([elbo.loss(bnn.model, bnn.guide, x, y) for _ in range(400)])
            means.append((losses.mean().item(), losses.std().item() / math.sqrt(400)))
        (m1, se1), (m2, se2) = means
        assert abs(m1 - m2) < 4 * math.hypot(se1, se2), (guide, means)


def test_direct_elbo_needs_targets():
    x, _ = _toy(8)
    bnn = _bnn("local")
    with pytest.raises(ValueError, match="needs the observed targets y"):
        bnn.elbo().loss(bnn.model, bnn.guide, x)


def test_local_reparameterization_lowers_gradient_variance():
    x, y = _toy(64)
    stats = {}
    for guide in ("meanfield", "local"):
        bnn = _bnn(guide)
        pyro.set_rng_seed(2)
        stats[guide] = pr.gradient_variance(bnn.model, bnn.guide, bnn.elbo(), x, y,
                                            num_draws=200, params="bnn$$$locs.0")  # fmt: skip
    assert stats["local"].trace_cov < 0.5 * stats["meanfield"].trace_cov


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
