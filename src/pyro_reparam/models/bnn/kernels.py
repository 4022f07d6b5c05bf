r"""The direct BNN ELBO's hot spots as autograd Functions with closed-form backward passes.

On a small network each autograd node costs more than its arithmetic (``benchmarks/bnn_speed.py``:
10-50-2 at batch 32), so a local-reparameterization layer, the KL of the mean-field guide and
the heteroscedastic Normal likelihood, ten to twenty nodes each as plain torch code, are one
node each here: the forward runs without recording, the backward is the gradient written out.
The layer and the KL take the softplus scales precomputed (``scale = softplus(raw)``, without
gradient) next to the raw parameters they differentiate, so the softplus runs once per step for
both.

**Local reparameterization** (Kingma, Salimans & Welling 2015) of ``y = x W^T + b`` for
``W ~ N(M, S^2)``, ``b ~ N(m, s^2)`` elementwise, ``x (B, in)``, ``W (out, in)``:

.. math:: y = \mu + \sigma \odot \varepsilon,\quad \mu = x M^T + m,\quad
          \sigma = \sqrt{\max(v, \tau)},\quad v = x^2 (S^2)^T + s^2,\quad
          \varepsilon \sim N(0, I)\ (B, out),

with ``tau`` the dtype's smallest normal number (no infinite gradient at ``v = 0``). For an
upstream gradient ``g = dL/dy`` and ``g_v = 1[v \ge \tau]\, g \odot \varepsilon / (2\sigma)``:

.. math:: \partial_x = g M + 2x \odot (g_v S^2),\ \partial_M = g^T x,\ \partial_m = \textstyle
          \sum_B g,\ \partial_{S} = 2S \odot (g_v^T x^2),\ \partial_{s} = 2s \odot \sum_B g_v,

and ``d/d raw = d/d scale * sigmoid(raw)`` for ``scale = softplus(raw)``. The same values and
gradients as :func:`~pyro_reparam.estimators.local_reparam.local_linear` (the traced ELBO's
layer op) under the same noise, to rounding (tests/models/test_bnn_kernels.py).

**KL** of the mean-field guide to the zero-mean prior, per tensor of ``n`` entries with prior
scale ``p``:

.. math:: \mathrm{KL} = \frac{\lVert S\rVert^2 + \lVert M\rVert^2}{2p^2} - \sum \log S
          + n\,(\log p - \tfrac12),\qquad \partial_M = M / p^2,\quad
          \partial_S = S / p^2 - 1 / S.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.autograd.function import once_differentiable

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class LocalLinear(torch.autograd.Function):
    """``LocalLinear.apply(x, loc, raw, scale, bias_loc, bias_raw, bias_scale)``: one draw
    ``(B, out)`` of the local-reparameterized layer (module docstring); ``scale``,
    ``bias_scale``: ``softplus`` of the raw parameters, given without gradient. The noise is
    ``torch.randn_like`` of the mean, drawn in the forward pass."""

    @staticmethod
    def forward(ctx, x, loc, raw, scale, bias_loc, bias_raw, bias_scale):
        x2, s2 = x * x, scale * scale
        mean = torch.addmm(bias_loc, x, loc.t())
        var = torch.addmm(bias_scale * bias_scale, x2, s2.t())
        tiny = torch.finfo(var.dtype).tiny
        kept = var >= tiny  # the clamp passes no gradient below it
        std = var.clamp_(min=tiny).sqrt_()
        eps = torch.randn_like(mean)
        ctx.save_for_backward(x, x2, loc, raw, scale, s2, bias_raw, bias_scale, std, eps, kept)
        return torch.addcmul(mean, std, eps)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, x2, loc, raw, scale, s2, bias_raw, bias_scale, std, eps, kept = ctx.saved_tensors
        gv = (g * eps).div_(2 * std).mul_(kept)
        gx = None
        if ctx.needs_input_grad[0]:
            gx = torch.addcmul(g @ loc, x, gv @ s2, value=2)
        g_loc = g.t() @ x
        g_raw = (gv.t() @ x2).mul_(2 * scale).mul_(torch.sigmoid(raw))
        g_bias_loc = g.sum(0)
        g_bias_raw = (2 * bias_scale * gv.sum(0)).mul_(torch.sigmoid(bias_raw))
        return gx, g_loc, g_raw, None, g_bias_loc, g_bias_raw, None


class NormalKL(torch.autograd.Function):
    """``NormalKL.apply(prior_scales, loc_0, raw_0, scale_0, loc_1, ...)``: the summed
    ``KL(N(loc, scale^2) || N(0, p^2))`` over the triples (module docstring), ``p`` the float
    in ``prior_scales`` of each triple; ``scale = softplus(raw)`` given without gradient. The
    tensors are treated together by torch's multi-tensor (``_foreach``) ops."""

    @staticmethod
    def forward(ctx, prior_scales: Sequence[float], *tensors):
        locs, raws, scales = tensors[0::3], tensors[1::3], tensors[2::3]
        inv = [1.0 / (p * p) for p in prior_scales]
        const = sum(m.numel() * (math.log(p) - 0.5) for m, p in zip(locs, prior_scales,
                                                                      strict=True))  # fmt: skip
        norms = torch.stack(torch._foreach_norm(scales) + torch._foreach_norm(locs))
        weights = norms.new_tensor(inv + inv)
        logs = torch.cat([t.reshape(-1) for t in torch._foreach_log(scales)])
        total = (0.5 * weights * norms.square()).sum() - logs.sum() + const
        ctx.g_locs = torch._foreach_mul(locs, inv)
        g_raws = torch._foreach_mul(scales, inv)
        torch._foreach_sub_(g_raws, torch._foreach_reciprocal(scales))
        torch._foreach_mul_(g_raws, torch._foreach_sigmoid(raws))
        ctx.g_raws = g_raws
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        out: list[torch.Tensor | None] = [None]
        for g_loc, g_raw in zip(torch._foreach_mul(ctx.g_locs, g),
                                torch._foreach_mul(ctx.g_raws, g), strict=True):  # fmt: skip
            out += [g_loc, g_raw, None]
        return tuple(out)


class HeteroscedasticNormalLogLik(torch.autograd.Function):
    r"""``HeteroscedasticNormalLogLik.apply(f, y)``: ``sum log N(y; mu, sigma^2)`` for raw
    outputs ``f (B, 2 o)`` split as ``mu = f[:, :o]``, ``sigma = softplus(f[:, o:]) + 1e-3``
    (the network's heteroscedastic likelihood) and targets ``y (B, o)``. With
    ``z = (y - mu) / sigma``:

    .. math:: \log p = -\tfrac12 \sum z^2 - \sum \log\sigma - n \log\sqrt{2\pi},\quad
              \partial_\mu = z / \sigma,\quad
              \partial_{f_2} = \frac{z^2 - 1}{\sigma}\,\mathrm{sigmoid}(f_2).
    """

    @staticmethod
    def forward(ctx, f, y):
        o = f.shape[-1] // 2
        loc, raw = f[..., :o], f[..., o:]
        scale = torch.nn.functional.softplus(raw).add_(1e-3)
        z = (y - loc).div_(scale)
        flat = z.reshape(-1)
        ctx.save_for_backward(z, scale, raw)
        return -0.5 * torch.dot(flat, flat) - scale.log().sum() - z.numel() * _LOG_SQRT_2PI

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        z, scale, raw = ctx.saved_tensors
        g_loc = (z / scale).mul_(g)
        g_raw = (z * z).sub_(1).div_(scale).mul_(torch.sigmoid(raw)).mul_(g)
        g_y = -g_loc if ctx.needs_input_grad[1] else None
        return torch.cat([g_loc, g_raw], -1), g_y
