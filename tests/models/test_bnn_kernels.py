"""The closed-form backward passes of the direct BNN ELBO (models/bnn/kernels.py) against
finite differences (``gradcheck``, float64) and against the plain torch code the traced ELBO
runs (``local_linear``, the network's closed-form KL) under the same noise."""

import pytest
import torch
import torch.nn.functional as F

from pyro_reparam.estimators.local_reparam import local_linear
from pyro_reparam.models import BayesianMLP
from pyro_reparam.models.bnn.kernels import HeteroscedasticNormalLogLik, LocalLinear, NormalKL


def _layer_inputs(dtype, batch=5, fan_in=4, fan_out=3, tiny_rows=0):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, fan_in, generator=g, dtype=dtype)
    x[:tiny_rows] = 1e-20  # x^2 = 1e-40 (subnormal): a variance below the clamp
    shapes = {"loc": (fan_out, fan_in), "raw": (fan_out, fan_in),
              "bias_loc": (fan_out,), "bias_raw": (fan_out,)}  # fmt: skip
    t = {k: torch.randn(s, generator=g, dtype=dtype) for k, s in shapes.items()}
    return x.requires_grad_(), {k: v.requires_grad_() for k, v in t.items()}


def _kernel(x, loc, raw, bias_loc, bias_raw, seed=11):
    torch.manual_seed(seed)
    return LocalLinear.apply(x, loc, raw, F.softplus(raw).detach(), bias_loc, bias_raw,
                             F.softplus(bias_raw).detach())  # fmt: skip


def _reference(x, loc, raw, bias_loc, bias_raw, seed=11):
    torch.manual_seed(seed)
    return local_linear(x, loc, F.softplus(raw), bias_loc, F.softplus(bias_raw))


def test_local_linear_gradients_match_finite_differences():
    x, t = _layer_inputs(torch.float64)
    args = (x, t["loc"], t["raw"], t["bias_loc"], t["bias_raw"])
    assert torch.autograd.gradcheck(_kernel, args, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("tiny_rows", [0, 2])
def test_local_linear_equals_the_traced_layer_op_value_and_gradients(tiny_rows):
    """The same draw and the same gradients as ``local_linear`` (what the traced ELBO's handler
    runs); with input rows of 1e-20 and vanishing bias scales the variance falls below the
    clamp there, which passes no gradient (else the input's gradient on those rows would gain
    ``2 x g eps S^2 / (2 sqrt(tiny))``, of order 0.1)."""
    x, t = _layer_inputs(torch.float32, tiny_rows=tiny_rows)
    if tiny_rows:
        with torch.no_grad():
            t["bias_raw"][:] = -200.0  # softplus underflows to 0
    args = (x, t["loc"], t["raw"], t["bias_loc"], t["bias_raw"])
    upstream = torch.randn(
        x.shape[0], t["loc"].shape[0], generator=torch.Generator().manual_seed(1)
    )
    outs = []
    for fn in (_kernel, _reference):
        y = fn(*args)
        outs.append((y.detach(), torch.autograd.grad((y * upstream).sum(), args)))
    (y_k, g_k), (y_r, g_r) = outs
    torch.testing.assert_close(y_k, y_r)
    for name, a, b in zip(("x", "loc", "raw", "bias_loc", "bias_raw"), g_k, g_r, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert g_k[0].isfinite().all() and g_k[4].isfinite().all()


def _kl_inputs(dtype):
    g = torch.Generator().manual_seed(2)
    shapes = [(3, 4), (3,), (2, 3), (2,)]
    tensors = []
    for s in shapes:
        loc = torch.randn(s, generator=g, dtype=dtype).requires_grad_()
        raw = (torch.randn(s, generator=g, dtype=dtype) - 1.0).requires_grad_()
        tensors += [loc, raw]
    return tensors, [0.5, 1.0, 0.7, 1.0]


def _kl_kernel(priors, *pairs):
    triples = []
    for loc, raw in zip(pairs[::2], pairs[1::2], strict=True):
        triples += [loc, raw, F.softplus(raw).detach()]
    return NormalKL.apply(priors, *triples)


def test_normal_kl_gradients_match_finite_differences():
    tensors, priors = _kl_inputs(torch.float64)
    assert torch.autograd.gradcheck(lambda *t: _kl_kernel(priors, *t), tuple(tensors))


def test_normal_kl_equals_the_torch_kl_of_the_guide():
    """Against ``torch.distributions.kl_divergence`` of the Normals (an independent formula)."""
    tensors, priors = _kl_inputs(torch.float32)
    kl = _kl_kernel(priors, *tensors)
    ref = sum(
        torch.distributions.kl_divergence(
            torch.distributions.Normal(loc, F.softplus(raw)),
            torch.distributions.Normal(torch.zeros_like(loc), p),
        ).sum()
        for loc, raw, p in zip(tensors[::2], tensors[1::2], priors, strict=True)
    )
    torch.testing.assert_close(kl, ref)
    for a, b in zip(torch.autograd.grad(kl, tensors), torch.autograd.grad(ref, tensors),
                    strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_network_kl_is_the_kernel_kl():
    """``BayesianMLP.kl()`` (plain torch code) and the kernel agree on a network's guide."""
    torch.manual_seed(0)
    bnn = BayesianMLP(3, 1, (8, 6), init_scale=0.3)
    triples, priors = [], []
    for l, (s_w, s_b) in enumerate(bnn._prior_floats()):
        for loc, raw, p in ((bnn.locs[l], bnn.raw_scales[l], s_w),
                            (bnn.bias_locs[l], bnn.bias_raw_scales[l], s_b)):  # fmt: skip
            triples += [loc, raw, F.softplus(raw).detach()]
            priors.append(p)
    assert NormalKL.apply(priors, *triples).item() == pytest.approx(bnn.kl(), rel=1e-6)


def _outputs(dtype, outputs):
    g = torch.Generator().manual_seed(4)
    f = (2 * torch.randn(6, 2 * outputs, generator=g, dtype=dtype)).requires_grad_()
    return f, torch.randn(6, outputs, generator=g, dtype=dtype).requires_grad_()


@pytest.mark.parametrize("outputs", [1, 2])
def test_normal_log_lik_gradients_match_finite_differences(outputs):
    f, y = _outputs(torch.float64, outputs)
    assert torch.autograd.gradcheck(HeteroscedasticNormalLogLik.apply, (f, y))


@pytest.mark.parametrize("outputs", [1, 2])
def test_normal_log_lik_equals_torch_normal_log_prob(outputs):
    f, y = _outputs(torch.float32, outputs)
    value = HeteroscedasticNormalLogLik.apply(f, y)
    loc, scale = f[:, :outputs], F.softplus(f[:, outputs:]) + 1e-3
    ref = torch.distributions.Normal(loc, scale).log_prob(y).sum()
    torch.testing.assert_close(value, ref)
    for a, b in zip(torch.autograd.grad(value, (f, y)), torch.autograd.grad(ref, (f, y)),
                    strict=True):  # fmt: skip
        torch.testing.assert_close(a, b)


def test_the_kernels_refuse_a_second_derivative():
    """A gradient of a gradient raises (the backward passes are not differentiable) rather
    than returning a silently incomplete one."""
    x, t = _layer_inputs(torch.float64)
    y = _kernel(x, t["loc"], t["raw"], t["bias_loc"], t["bias_raw"]).pow(2).sum()
    (g,) = torch.autograd.grad(y, t["loc"], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()
    f, y = _outputs(torch.float64, 1)
    (g,) = torch.autograd.grad(HeteroscedasticNormalLogLik.apply(f, y).pow(2), f,
                               create_graph=True)  # fmt: skip
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()
    tensors, priors = _kl_inputs(torch.float64)
    (g,) = torch.autograd.grad(_kl_kernel(priors, *tensors).pow(2), tensors[0], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()
