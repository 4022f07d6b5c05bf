"""watch_sampling catches the background story's mistake: a Bayesian Linear layer whose weights
are drawn with .sample(), in plain PyTorch and inside a Pyro model, at the line that does it."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torch import nn

import pyro_reparam as pr


class BayesianLinear(nn.Module):
    """The layer of the story, as its author first wrote it: the draw uses .sample()."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.weight_mu = nn.Parameter(torch.randn(out_features, in_features) * 0.1)
        self.weight_log_sigma = nn.Parameter(torch.full((out_features, in_features), -3.0))
        self.bias_mu = nn.Parameter(torch.zeros(out_features))
        self.bias_log_sigma = nn.Parameter(torch.full((out_features,), -3.0))

    def sample_parameters(self):
        weights = torch.distributions.Normal(
            self.weight_mu, torch.exp(self.weight_log_sigma)
        ).sample()
        bias = torch.distributions.Normal(self.bias_mu, torch.exp(self.bias_log_sigma)).sample()
        return weights, bias

    def forward(self, x):
        weights, bias = self.sample_parameters()
        return F.linear(x, weights, bias)


def _train_step(layer):
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    loss = (layer(x) - y).pow(2).mean()
    loss.backward()


def test_without_the_watch_the_story_error_is_torchs():
    with pytest.raises(RuntimeError, match="does not require grad"):
        _train_step(BayesianLinear(3, 2))


def test_the_watch_names_the_sample_call_and_the_four_options():
    with pr.watch_sampling(), pytest.raises(pr.SampledWithoutGradientError) as err:
        _train_step(BayesianLinear(3, 2))
    text = str(err.value)
    assert f"{__file__}:" in text and "in sample_parameters" in text
    assert text.startswith("Normal.sample() at ") and ".sample()`)" in text
    assert "'loc', 'scale'" in text
    for option in ("(1) pathwise: call .rsample()", "(2) score function", "(3) relaxation",
                   "(4) enumeration"):  # fmt: skip
        assert option in text


def test_warn_mode_names_the_draws_when_backward_fails():
    with (
        pytest.warns(UserWarning, match="in sample_parameters"),
        pr.watch_sampling("warn") as report,
        pytest.raises(pr.SampledWithoutGradientError, match="the loss has no gradient"),
    ):
        _train_step(BayesianLinear(3, 2))
    assert len(report.sites) == 2 and all(__file__ in s for s in report.sites)


def test_rsample_no_grad_and_library_draws_are_left_alone():
    layer = BayesianLinear(3, 2)
    with warnings.catch_warnings(), pr.watch_sampling():
        warnings.simplefilter("error")
        q = torch.distributions.Normal(layer.weight_mu, layer.weight_log_sigma.exp())
        assert q.rsample().requires_grad
        with torch.no_grad():
            q.sample()
        torch.distributions.Bernoulli(torch.tensor(0.3, requires_grad=True)).sample()
        torch.distributions.Normal(torch.zeros(2), 1.0).sample()


def test_the_watch_restores_torch_on_exit():
    sample, backward = torch.distributions.Normal.sample, torch.Tensor.backward
    with pytest.raises(pr.SampledWithoutGradientError), pr.watch_sampling():
        _train_step(BayesianLinear(3, 2))
    assert torch.distributions.Normal.sample is sample and torch.Tensor.backward is backward


def test_inside_a_pyro_model_and_guide():
    layer = BayesianLinear(3, 1)

    def model(x, y):
        w = pyro.sample("w", dist.Normal(torch.zeros(1, 3), 1.0).to_event(2))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(F.linear(x, w).squeeze(-1), 1.0), obs=y)

    def guide(x, y):
        pyro.module("layer", layer)
        w = dist.Normal(layer.weight_mu, layer.weight_log_sigma.exp()).sample()
        pyro.sample("w", dist.Delta(w).to_event(2))

    svi = SVI(model, guide, Adam({"lr": 0.01}), Trace_ELBO())
    x, y = torch.randn(8, 3), torch.randn(8)
    with pr.watch_sampling(), pytest.raises(pr.SampledWithoutGradientError, match="in guide"):
        svi.step(x, y)

    def good_guide(x, y):
        pyro.module("layer", layer)
        q = dist.Normal(layer.weight_mu, layer.weight_log_sigma.exp()).to_event(2)
        pyro.sample("w", q)

    with pr.watch_sampling():
        SVI(model, good_guide, Adam({"lr": 0.01}), Trace_ELBO()).step(x, y)


def test_bad_action():
    with pytest.raises(ValueError, match="action must be one of"), pr.watch_sampling("ignore"):
        pass
