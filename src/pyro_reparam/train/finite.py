"""Whether tensors hold only finite numbers, with one device sync in the usual case: the
per-step checks of :func:`~pyro_reparam.train.fit` (gradients, updated parameters) and its
check of the data."""

from __future__ import annotations

import math

import torch

SUM_FROM = 4096
"""Mean entries per tensor from which :func:`all_finite` reduces by sums, not fused norms."""


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether no tensor holds NaN or inf, with one device sync in the usual case.

    A NaN or inf entry makes a reduction over it non-finite (NaN propagates, ``inf + x`` stays
    infinite or becomes NaN), so one finite total of per-tensor reductions proves every entry
    finite. The reductions: per-tensor sums for large tensors (on the CPU about half the time
    of a 2-norm: 0.07 ms against 0.13 ms for a 784-400-50 VAE's parameters), torch's fused
    2-norms (``_foreach_norm``, one call for all) for many small ones, where per-tensor calls
    would dominate. A non-finite total can also be the overflow of huge finite entries
    (``|x| > 1.8e19`` squared, or a sum beyond ``3.4e38`` in float32), so then each tensor's
    min and max (``aminmax``) decide exactly."""
    tensors = [t for t in tensors if t.numel()]
    if not tensors:
        return True
    with torch.no_grad():
        if sum(t.numel() for t in tensors) >= SUM_FROM * len(tensors):
            totals = [t.sum() for t in tensors]
        else:
            totals = torch._foreach_norm(tensors)
        if math.isfinite(torch.stack(totals).sum().item()):
            return True
        return _finite([v for t in tensors for v in torch.aminmax(t)])


def _finite(values: list[torch.Tensor]) -> bool:
    if len({v.dtype for v in values}) > 1:
        values = [v.double() for v in values]
    return bool(torch.stack(values).isfinite().all())
