"""Flipout (Wen et al. 2018) as a Pyro effect handler, for ``F.linear`` and ``F.conv1d/2d/3d``.

For a mean-field Normal weight ``W = mu + sigma * eps`` (``eps ~ N(0, I)``, one draw per call),
example ``n`` uses ``W_n = mu + (sigma * eps) * (r_n s_n^T)`` with random signs ``s_n`` over
the inputs (channels) and ``r_n`` over the outputs. Because ``eps`` is symmetric and
independent of the signs, each ``W_n`` has exactly the distribution ``q(W)``, and::

    out_n = f(x_n, mu) + f(x_n * s_n, sigma * eps) * r_n + s_b * eps_n      (f: linear or conv)

costs two ops per call. The bias noise ``eps_n`` is drawn per example. So every example's
output has the distribution of weight sampling (for a convolution, jointly over its output
positions, which share ``W_n``): per output, mean ``f(x, mu) + m`` and variance
``f(x^2, sigma^2) + s^2``. Different examples are uncorrelated (the signs average the shared
``eps`` out), which is what lowers the gradient variance.

Shapes: linear as in :func:`~pyro_reparam.estimators.local_reparam.affine` (batched weights
``(..., out, in)`` allowed); conv ``x (N, C_in, *spatial)`` or unbatched ``(C_in, *spatial)``,
``W (C_out, C_in / groups, *kernel)``, with ``s`` per input channel and ``r`` per output channel
of each example.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from pyro_reparam.estimators.local_reparam import (
    NormalDraw,
    WeightDrawMessenger,
    affine,
    bias_moments,
)


def _signs(shape: Sequence[int], like: Tensor) -> Tensor:
    """Independent random ``+-1`` of ``shape`` (``like``'s dtype and device)."""
    return torch.randint(0, 2, tuple(shape), dtype=like.dtype, device=like.device) * 2 - 1


def flipout_linear(
    x: Tensor,
    weight_loc: Tensor,
    weight_scale: Tensor,
    bias_loc: Tensor | None = None,
    bias_scale: Tensor | None = None,
) -> Tensor:
    """One Flipout draw of ``x W^T + b``: ``x mu^T + m + ((x * s) (sigma * eps)^T) * r + s_b *
    eps_n`` with one ``eps`` for the call and ``s``, ``r``, ``eps_n`` per example."""
    mean = affine(x, weight_loc, bias_loc)
    x = x.expand(*mean.shape[:-1], x.shape[-1])  # one row per example of the output
    delta = affine(x * _signs(x.shape, x), weight_scale * torch.randn_like(weight_scale))
    out = mean + delta * _signs(delta.shape, delta)
    if bias_scale is None:
        return out
    if bias_scale.dim() > 1:  # batched (..., out) against (..., B, out)
        bias_scale = bias_scale.unsqueeze(-2)
    return out + bias_scale * torch.randn_like(out)


def flipout_conv(
    conv: Callable[..., Tensor],
    x: Tensor,
    weight_loc: Tensor,
    weight_scale: Tensor,
    bias_loc: Tensor | None = None,
    bias_scale: Tensor | None = None,
    *args,
    **kwargs,
) -> Tensor:
    """One Flipout draw of ``conv(x, W, b, *args, **kwargs)`` (``conv``: torch's
    ``F.conv1d/2d/3d``), signs per example and channel, broadcast over positions."""
    spatial = weight_loc.dim() - 2
    ones = (1,) * spatial
    mean = conv(x, weight_loc, bias_loc, *args, **kwargs)
    s_in = _signs((*x.shape[:-spatial], *ones), x)
    delta = conv(x * s_in, weight_scale * torch.randn_like(weight_scale), None, *args, **kwargs)
    out = mean + delta * _signs((*delta.shape[:-spatial], *ones), delta)
    if bias_scale is None:
        return out
    noise = bias_scale * torch.randn(out.shape[:-spatial], dtype=out.dtype, device=out.device)
    return out + noise.reshape(*noise.shape, *ones)


def _flipout_linear_op(handler, original, x, weight: NormalDraw, bias) -> Tensor:
    handler.check_batched(x, weight, "linear")
    return flipout_linear(x, weight.loc, weight.scale, *bias_moments(bias))


def _flipout_conv_op(spatial: int):
    def op(handler, original, x, weight: NormalDraw, bias, *args, **kwargs) -> Tensor:
        if weight.loc.dim() != spatial + 2:
            raise ValueError(
                f"Flipout: site {weight.name!r} has a weight of shape {tuple(weight.loc.shape)}; "
                f"F.conv{spatial}d takes one kernel (out, in, k...) per call, so batch dims "
                "(vectorized particles or a plate around the site) are not supported: use "
                "vectorize_particles=False or sample the kernel outside plates"
            )
        loc, scale = bias_moments(bias)
        return flipout_conv(original, x, weight.loc, weight.scale, loc, scale, *args, **kwargs)

    return op


class Flipout(WeightDrawMessenger):
    """Flipout of ``F.linear`` and ``F.conv1d/2d/3d`` on the guide's Normal weight draws.

    ``with Flipout(): svi.step(x, y)`` (or around ``elbo.loss``): the guide's Normal draws are
    recorded (:class:`~pyro_reparam.estimators.local_reparam.WeightDrawMessenger`), and each
    call with a recorded weight returns :func:`flipout_linear` / :func:`flipout_conv` of the
    weight's (and, when recorded, the bias's) Normal; a fixed or unrecorded bias is added as
    it is. Every example's output has the distribution of weight sampling, examples are
    decorrelated. Each weight may enter one call per run (checked).
    """

    ops = {
        "linear": _flipout_linear_op,
        "conv1d": _flipout_conv_op(1),
        "conv2d": _flipout_conv_op(2),
        "conv3d": _flipout_conv_op(3),
    }
