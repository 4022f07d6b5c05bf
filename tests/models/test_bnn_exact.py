"""Exact-posterior tools of BayesianMLP: the infinite-width prior (NNGP) and batched HMC."""

import math

import arviz as az
import pytest
import torch

import pyro_reparam as pr
from pyro_reparam.apps.bnn_job import toy_gap
from pyro_reparam.models import BayesianMLP
from pyro_reparam.models.bnn.nngp import fit_prior_scales, log_marginal_likelihood, relu_nngp_kernel


def test_nngp_kernel_is_the_covariance_of_wide_prior_networks():
    """Two hidden ReLU layers of width 1000 under the same prior: the empirical covariance of
    the output at three inputs matches the kernel recursion within 4 Monte Carlo s.e. (Each
    layer's pre-activations given the layer below are drawn from their exact Gaussian,
    ``cov = s_w^2 h h' / fan_in + s_b^2``, which is what ``h W + b`` is.)"""
    torch.manual_seed(0)
    scales = torch.tensor([1.5, 0.7, 2.0, 0.3], dtype=torch.float64)
    x = torch.tensor([[0.5, -1.0], [1.0, 1.0], [-2.0, 0.3]], dtype=torch.float64)
    s, width = 40000, 1000

    def layer(h, s_w, s_b, units):
        cov = s_w**2 * h @ h.transpose(-1, -2) / h.shape[-1] + s_b**2
        chol = torch.linalg.cholesky(cov + 1e-9 * torch.eye(3, dtype=cov.dtype))
        return chol @ torch.randn(*cov.shape[:-1], units, dtype=cov.dtype)

    outputs = []
    for _ in range(s // 5000):
        h = x.expand(5000, *x.shape)
        for _ in range(2):
            h = torch.relu(layer(h, scales[0], scales[1], width))
        outputs.append(layer(h, scales[2], scales[3], 1)[..., 0])
    f = torch.cat(outputs)
    products = f[:, :, None] * f[:, None, :]
    empirical, se = products.mean(0), products.std(0) / math.sqrt(s)
    kernel = relu_nngp_kernel(x, x, 2, scales)
    assert ((empirical - kernel).abs() < 4 * se).all(), (empirical, kernel, se)


def test_prior_scales_raise_the_marginal_likelihood_and_find_the_noise():
    x, y = toy_gap()
    xs, ys = (x - x.mean(0)) / x.std(0), (y - y.mean()) / y.std()
    fitted = fit_prior_scales(xs, ys, depth=1)
    fan_in = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.5], dtype=torch.float64)
    assert fitted.log_marginal_likelihood > float(
        log_marginal_likelihood(xs.double(), ys.double(), 1, fan_in)
    )
    assert abs(fitted.noise * y.std().item() - 0.15) < 0.05  # true noise 0.15


def test_hmc_matches_the_exact_posterior_of_a_linear_gaussian_model():
    """No hidden layer: Bayesian linear regression with known noise, posterior in closed form.
    Mean and standard deviation of every coefficient within 4 Monte Carlo s.e. (ESS from
    ArviZ) of the exact ones."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 3, generator=g)
    y = x @ torch.tensor([1.0, -0.5, 0.2]) + 0.3 + 0.5 * torch.randn(30, generator=g)
    bnn = BayesianMLP(3, 1, (), prior=0.7, noise="homoscedastic")
    result = bnn.fit_hmc(x, y, num_samples=400, warmup=200, num_chains=4, num_steps=8)
    xs, ys = bnn.transform(x, y)
    design = torch.cat([xs, torch.ones(30, 1)], 1).double()
    prior_precision = torch.diag(torch.tensor([0.7**-2] * 3 + [1.0])).double()
    noise2 = bnn.log_noise.exp().item() ** 2
    cov = torch.linalg.inv(design.T @ design / noise2 + prior_precision)
    mean = cov @ design.T @ ys.double() / noise2
    draws = result.samples.double()
    ess = torch.as_tensor(az.ess(draws.numpy(), chain_axis=0, draw_axis=1))
    sd = cov.diagonal().sqrt()
    assert ((draws.mean((0, 1)) - mean).abs() < 4 * sd / ess.sqrt()).all()
    assert ((draws.flatten(0, 1).std(0) / sd - 1).abs() < 4 / (2 * ess).sqrt()).all()
    assert (result.accept_rate > 0.5).all()


def test_hmc_with_the_nngp_prior_is_uncertain_in_the_gap():
    """The gap toy: predictive std inside the gap (|x| <= 0.5) at least twice the std near the
    data (1.5 <= |x| <= 2.5), and the mean on the data within 0.15 of the truth (noise 0.15)."""
    x, y = toy_gap()
    bnn = BayesianMLP(1, 1, (50,), prior="nngp", noise="homoscedastic")
    bnn.fit_hmc(x, y, num_samples=100, warmup=200)
    grid = torch.linspace(-3, 3, 121)
    p = bnn.predict(grid[:, None], num_samples=400)
    gap = p["std"][grid.abs() <= 0.5].mean()
    near = p["std"][(grid.abs() >= 1.5) & (grid.abs() <= 2.5)].mean()
    on_data = grid.abs() >= 1
    truth = torch.sin(2 * grid) + grid / 2
    rmse = (p["mean"][on_data] - truth[on_data]).pow(2).mean().sqrt()
    assert gap > 2 * near, (gap, near)
    assert rmse < 0.15, rmse
    assert bnn.hmc_rhat(grid[:, None]).shape == (121,)
    dt = bnn.hmc_datatree(x, y)
    assert dt.posterior.sizes["chain"] == 16 and dt.posterior.sizes["draw"] == 100
    report = pr.diagnose(dt)
    assert report["num_chains"] == 16 and math.isfinite(float(report["loo"].elpd))


def test_nngp_prior_needs_data_and_relu_regression():
    with pytest.raises(ValueError, match="prior='nngp' needs"):
        BayesianMLP(2, 3, task="classification", prior="nngp")
    with pytest.raises(ValueError, match="prior='nngp' needs"):
        BayesianMLP(2, activation="tanh", prior="nngp")
    bnn = BayesianMLP(1, prior="nngp")
    with pytest.raises(RuntimeError, match="call fit or fit_hmc first"):
        bnn.kl()
    with pytest.raises(RuntimeError, match="call fit_hmc first"):
        bnn.hmc_rhat(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="needs noise='homoscedastic'"):
        bnn.fit_hmc(torch.zeros(3, 1), torch.zeros(3))


def test_fit_after_fit_hmc_returns_to_the_guide():
    x, y = toy_gap(40)
    bnn = BayesianMLP(1, 1, (8,), prior="nngp", noise="homoscedastic")
    bnn.fit_hmc(x, y, num_samples=5, warmup=5, num_chains=2, num_steps=2, map_steps=5)
    assert bnn.hmc_result is not None
    bnn.fit(x, y, epochs=2)
    assert bnn.hmc_result is None and bnn.prior_fit is not None
    assert bnn.prior_scales[0, 1] == pytest.approx(bnn.prior_fit.bias)
    reloaded = BayesianMLP(1, 1, (8,), prior="nngp", noise="homoscedastic")
    reloaded.load_state_dict(bnn.state_dict())  # the fitted prior travels with the state
    assert reloaded.kl() == pytest.approx(bnn.kl())


def test_fit_hmc_classifies_two_separated_blobs():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (80,), generator=g)
    x = torch.randn(80, 2, generator=g) * 0.5 + (labels[:, None] * 2 - 1) * 1.5
    bnn = BayesianMLP(2, 2, (8,), task="classification")
    bnn.fit_hmc(x, labels, num_samples=50, warmup=50, num_chains=2, num_steps=8)
    probs = bnn.predict(torch.tensor([[-1.5, -1.5], [1.5, 1.5], [0.0, 0.0]]))["probs"]
    assert probs[0, 0] > 0.9 and probs[1, 1] > 0.9
    assert 0.05 < probs[2, 0] < 0.95  # on the boundary the draws disagree


@pytest.mark.cuda
def test_nngp_prior_and_hmc_on_cuda():
    x, y = toy_gap(60)
    bnn = BayesianMLP(1, 1, (16,), prior="nngp", noise="homoscedastic")
    result = bnn.fit_hmc(x, y, num_samples=20, warmup=20, num_chains=2, num_steps=8,
                         device="cuda")  # fmt: skip
    assert result.samples.device.type == "cuda" and bnn.prior_scales.device.type == "cuda"
    p = bnn.predict(torch.linspace(-3, 3, 7)[:, None])
    assert p["mean"].device.type == "cuda" and torch.isfinite(p["std"]).all()
    assert bnn.hmc_rhat(x).shape == (60,)
    bnn.fit(x, y, epochs=2, device="cuda")
    assert bnn.hmc_result is None
