"""Local reparameterization and Flipout handlers: closed-form moments of the outputs they draw,
what they record, and the errors they raise."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroSample
from torch import nn

from pyro_reparam.estimators import Flipout, LocalReparameterization

DRAWS = 4000
X = torch.tensor([[1.0, -0.5, 2.0], [0.3, 0.3, 0.3], [-1.0, 0.5, 0.0]])
W_LOC = torch.tensor([[0.5, -1.0, 0.2], [1.5, 0.3, -0.7]])
W_SCALE = torch.tensor([[0.2, 0.3, 0.4], [0.4, 0.3, 0.2]])
B_LOC, B_SCALE = torch.tensor([0.1, -0.4]), torch.tensor([0.6, 0.5])


def _guide(w_scale=W_SCALE, b_scale=B_SCALE):
    pyro.sample("w", dist.Normal(W_LOC, w_scale).to_event(2))
    pyro.sample("b", dist.Normal(B_LOC, b_scale).to_event(1))


def _model(x=X):
    w = pyro.sample("w", dist.Normal(torch.zeros(2, 3), 1.0).to_event(2))
    b = pyro.sample("b", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    return F.linear(x, w, b)


def _draws(handler, guide=_guide, model=_model, n=DRAWS) -> torch.Tensor:
    """``n`` independent runs of the guide, then the model on its trace: ``(n, *output)``."""
    outs = []
    with handler():
        for _ in range(n):
            trace = poutine.trace(guide).get_trace()
            outs.append(poutine.replay(model, trace=trace)())
    return torch.stack(outs)


def _assert_moments(out, mean, var):
    """Mean and variance of the draws ``out (R, ...)`` within 4 Monte Carlo s.e. of the
    closed form (Gaussian draws: s.e. of the sample variance ``var * sqrt(2 / (R - 1))``)."""
    r = out.shape[0]
    assert ((out.mean(0) - mean).abs() < 4 * (var / r).sqrt()).all(), (out.mean(0), mean)
    var_se = var * math.sqrt(2 / (r - 1))
    assert ((out.var(0) - var).abs() < 4 * var_se).all(), (out.var(0), var)


def _assert_uncorrelated(a, b):
    """Sample covariance of the draws ``a``, ``b`` (``(R, ...)``) within 4 s.e. of zero."""
    r = a.shape[0]
    cov = ((a - a.mean(0)) * (b - b.mean(0))).mean(0)
    assert (cov.abs() < 4 * (a.var(0) * b.var(0) / r).sqrt()).all(), cov


def _linear_moments(x=X):
    mean = x @ W_LOC.T + B_LOC
    return mean, x.pow(2) @ W_SCALE.pow(2).T + B_SCALE.pow(2)


@pytest.mark.parametrize("handler", [LocalReparameterization, Flipout])
def test_linear_outputs_have_the_moments_of_weight_sampling_and_uncorrelated_examples(handler):
    """Per example and output: mean ``x mu^T + m``, variance ``x^2 (sigma^2)^T + s^2`` (the bias
    variance is 34-94% of it here); different examples uncorrelated."""
    out = _draws(handler)
    assert out.shape == (DRAWS, 3, 2)
    _assert_moments(out, *_linear_moments())
    for n, m in ((0, 1), (0, 2), (1, 2)):
        _assert_uncorrelated(out[:, n], out[:, m])


@pytest.mark.parametrize("handler", [LocalReparameterization, Flipout])
def test_weights_with_batch_dims_give_one_output_per_draw(handler):
    """Vectorized particles: ``W (P, out, in)`` from a plate, applied as ``x @ W^T + b``."""
    p = 20000

    def guide():
        with pyro.plate("particles", p):
            _guide()

    with handler():
        trace = poutine.trace(guide).get_trace()
        out = poutine.replay(_model, trace=trace)()
    assert out.shape == (p, 3, 2)
    _assert_moments(out, *_linear_moments())
    _assert_uncorrelated(out[:, 0], out[:, 1])


def test_flipout_convolutions_have_the_joint_of_weight_sampling_within_an_example():
    """``conv1d``: per output mean ``conv(x, mu) + m`` and variance ``conv(x^2, sigma^2) + s^2``;
    two positions of one example share the kernel draw, so their covariance is
    ``sum_{c,k} x_{c,p+k} x_{c,q+k} sigma_{o,c,k}^2 + s_o^2``; examples are uncorrelated."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 5, generator=g)
    loc, scale = torch.randn(2, 2, 3, generator=g), 0.1 + 0.3 * torch.rand(2, 2, 3, generator=g)

    def guide():
        pyro.sample("k", dist.Normal(loc, scale).to_event(3))
        pyro.sample("b", dist.Normal(B_LOC, B_SCALE).to_event(1))

    def model():
        k = pyro.sample("k", dist.Normal(torch.zeros(2, 2, 3), 1.0).to_event(3))
        b = pyro.sample("b", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        return F.conv1d(x, k, b)

    out = _draws(Flipout, guide, model)  # (R, N, C_out, L_out)
    mean = F.conv1d(x, loc, B_LOC)
    var = F.conv1d(x.pow(2), scale.pow(2)) + B_SCALE.pow(2)[:, None]
    _assert_moments(out, mean, var)
    patches = x.unfold(-1, 3, 1)  # (N, C, L_out, k)
    cov01 = torch.einsum("nck,nck,ock->no", patches[:, :, 0], patches[:, :, 1], scale.pow(2))
    cov01 = cov01 + B_SCALE.pow(2)
    a, b = out[..., 0], out[..., 1]
    empirical = ((a - a.mean(0)) * (b - b.mean(0))).mean(0)
    se = (a.var(0) * b.var(0) + empirical.pow(2)).sqrt() / math.sqrt(DRAWS)
    assert ((empirical - cov01).abs() < 4 * se).all(), (empirical, cov01)
    _assert_uncorrelated(out[:, 0], out[:, 1])


@pytest.mark.parametrize("handler", [LocalReparameterization, Flipout])
def test_ops_are_restored_on_exit_and_on_errors(handler):
    originals = F.linear, F.conv2d
    with handler():
        assert F.linear is not originals[0]
    assert (F.linear, F.conv2d) == originals
    with pytest.raises(KeyError), handler():
        raise KeyError("inside")
    assert (F.linear, F.conv2d) == originals


@pytest.mark.parametrize("handler", [LocalReparameterization, Flipout])
def test_unrecorded_weights_pass_through_to_torch(handler):
    """Parameters, non-Normal draws and values derived from a draw are torch's own F.linear."""
    w, b = torch.randn(2, 3), torch.randn(2)
    with handler():
        assert torch.equal(F.linear(X, w, b), X @ w.T + b)
        laplace = pyro.sample("w", dist.Laplace(W_LOC, W_SCALE).to_event(2))
        assert torch.allclose(F.linear(X, laplace, b), X @ laplace.T + b)
        normal = pyro.sample("v", dist.Normal(W_LOC, W_SCALE).to_event(2))
        assert torch.allclose(F.linear(X, normal * 1.0, b), X @ normal.T + b)


@pytest.mark.parametrize("handler", [LocalReparameterization, Flipout])
def test_a_weight_used_in_two_calls_raises_naming_the_site(handler):
    def model():
        w = pyro.sample("shared.weight", dist.Normal(torch.zeros(3, 3), 1.0).to_event(2))
        return F.linear(F.linear(X, w), w)

    with pytest.raises(RuntimeError, match=r"'shared\.weight' enters a second F\.linear call"):
        handler()(model)()


def test_replayed_model_sites_keep_the_guides_distribution():
    """The model's sites are replayed from the guide's trace and carry the prior as ``fn``:
    the handler keeps the guide's record (wrapping guide and model separately with one
    instance), and does not record a value that replay gives inside it."""
    handler = LocalReparameterization()
    guide = handler(lambda: _guide(W_SCALE * 1e-4, B_SCALE * 1e-4))
    trace = poutine.trace(guide).get_trace()
    out = poutine.replay(handler(_model), trace=trace)()  # the prior would give N(0, x^2 + 1)
    assert (out - (X @ W_LOC.T + B_LOC)).abs().max() < 1e-3
    outside = poutine.trace(_guide).get_trace()  # drawn without the handler
    with LocalReparameterization():
        out = poutine.replay(_model, trace=outside)()
    w, b = outside.nodes["w"]["value"], outside.nodes["b"]["value"]
    assert torch.equal(out, F.linear(X, w, b))


@pytest.mark.parametrize("handler", [LocalReparameterization, Flipout])
def test_nn_linear_with_an_autonormal_guide_is_reparameterized(handler):
    """``PyroModule[nn.Linear]`` calls F.linear; ``AutoNormal``'s model-site value is a Delta
    over its auxiliary Normal draw, which the handler follows: with tiny guide scales the
    output is the guide's mean, and two equal rows get independent noise."""
    layer = PyroModule[nn.Linear](3, 2)
    layer.weight = PyroSample(dist.Normal(0.0, 1.0).expand([2, 3]).to_event(2))
    layer.bias = PyroSample(dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    guide = AutoNormal(layer, init_scale=1e-4)
    x = torch.ones(2, 3)
    guide(x)
    with handler():
        trace = poutine.trace(guide).get_trace(x)
        out = poutine.replay(layer, trace=trace)(x)
    loc_w, loc_b = guide.locs.weight, guide.locs.bias
    assert (out - F.linear(x, loc_w, loc_b)).abs().max() < 1e-2
    assert not torch.equal(out[0], out[1])
    plain = poutine.replay(layer, trace=trace)(x)  # weight sampling: one W for both rows
    assert torch.equal(plain[0], plain[1])


def test_batched_kernels_and_unbatched_inputs_raise_naming_the_site():
    def conv_model():
        with pyro.plate("particles", 4):
            k = pyro.sample("conv.weight", dist.Normal(torch.zeros(2, 2, 3), 1.0).to_event(3))
        return F.conv1d(torch.randn(1, 2, 5), k)

    with pytest.raises(ValueError, match=r"'conv\.weight'.*batch dims"):
        Flipout()(conv_model)()

    def vector_input_model():
        with pyro.plate("particles", 4):
            w = pyro.sample("fc.weight", dist.Normal(W_LOC, W_SCALE).to_event(2))
        return F.linear(X[0], w)

    for handler in (LocalReparameterization, Flipout):
        with pytest.raises(ValueError, match=r"'fc\.weight' has a weight with batch dims"):
            handler()(vector_input_model)()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_flipout_conv2d_keeps_the_device_and_the_ops_arguments(device):
    """A conv2d draw under Flipout (stride, padding as keywords) stays on the device, with the
    output shape of F.conv2d."""
    x = torch.randn(4, 2, 6, 6, device=device)

    def model():
        k = pyro.sample("k", dist.Normal(torch.zeros(3, 2, 3, 3, device=device), 1.0).to_event(4))
        b = pyro.sample("b", dist.Normal(torch.zeros(3, device=device), 1.0).to_event(1))
        return F.conv2d(x, k, b, stride=2, padding=1)

    out = Flipout()(model)()
    assert out.device.type == device and out.shape == (4, 3, 3, 3)
