"""Warnings for fits that fail silently: each check returns what it found and warns
(``UserWarning``) with the site, the numbers and the fix.

* :func:`check_collapse`: posterior collapse. A latent whose ``KL(q(z_l | x) || p(z_l))``,
  averaged over a batch, is below ``threshold`` nats carries (almost) no information about
  ``x``: the decoder ignores it.
* :func:`check_data_scaling`: a minibatch of ``B`` of ``N`` data must count ``N / B`` times in
  the ELBO when the model has global latents, ``E_q[sum_i log p(x_i | z)] * N / B - KL``;
  unscaled, the prior outweighs the data by ``N / B`` and the posterior is too wide.
* :func:`check_plateau`: the training ELBO of the last ``window`` epochs gained less than its
  own epoch-to-epoch noise (a least-squares line through them rises by less than the residual
  sd): the fit stopped improving early.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyro.poutine as poutine
import torch
from pyro.poutine.subsample_messenger import _Subsample
from pyro.util import get_rng_state, set_rng_state

COLLAPSE_NATS = 0.01
MIN_PLATEAU_EPOCHS = 10
SCALE_RTOL = 1e-3


def check_collapse(
    source: Any, x: torch.Tensor | None = None, *, threshold: float = COLLAPSE_NATS,
    site: str = "z",
) -> int:  # fmt: skip
    """How many latents are collapsed, warning when any is. ``source``: per-latent KL in nats,
    ``(L,)`` or ``(B, L)`` (averaged over the batch), or a model with ``kl_per_latent(x)``
    evaluated on the batch ``x``."""
    owner = ""
    if hasattr(source, "kl_per_latent"):
        if x is None:
            raise ValueError("check_collapse: pass the batch x to evaluate kl_per_latent(x) on")
        owner = f"{type(source).__name__}: "
        with torch.no_grad():
            source = source.kl_per_latent(x)
    kl = torch.as_tensor(source, dtype=torch.float64).detach().cpu()
    batch = kl.reshape(-1, kl.shape[-1]).shape[0] if kl.dim() > 1 else 1
    per_latent = kl.reshape(-1, kl.shape[-1]).mean(0) if kl.dim() > 1 else kl.reshape(-1)
    collapsed = int((per_latent < threshold).sum())
    if collapsed:
        total = per_latent.sum().item()
        what = ("every latent is unused, so every input decodes to the same output"
                if collapsed == per_latent.numel() else "the decoder ignores them")  # fmt: skip
        warnings.warn(
            f"{owner}posterior collapse: {collapsed} of {per_latent.numel()} latents of site "
            f"{site!r} carry KL(q || p) < {threshold:g} nats (mean over {batch} inputs; all "
            f"latents together {total:.3g} nats per input): {what}. Fix: train longer, warm up "
            "the KL term (scale it from 0 to 1 over the first epochs), use a lower-variance "
            "gradient estimator for discrete latents, or fewer latents",
            UserWarning,
            stacklevel=2,
        )
    return collapsed


def check_data_scaling(model: Callable, guide: Callable, batch: Sequence[Any],
                       num_data: int) -> list[str]:  # fmt: skip
    """The observed sites of ``model(*batch)`` that a minibatch leaves unscaled although the
    guide has global latents (sample sites outside the observed sites' data plate): their scale
    should be ``num_data / B`` for ``B`` rows in the batch. The data plate is a plate of the
    observed sites of size ``B``. Warns naming them and the fix. The random state is put back."""
    batch = tuple(batch)
    rows = next(t.shape[0] for t in batch if isinstance(t, torch.Tensor))
    if rows >= num_data:
        return []
    state = get_rng_state()
    try:
        with torch.no_grad():
            guide_tr = poutine.trace(guide).get_trace(*batch)
            model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*batch)
    finally:
        set_rng_state(state)
    observed = [s for s in model_tr.nodes.values()
                if s["type"] == "sample" and s["is_observed"]]  # fmt: skip
    plates = {f.name for s in observed for f in s["cond_indep_stack"]
              if f.vectorized and f.size == rows}  # fmt: skip
    global_sites = [
        name for name, s in guide_tr.nodes.items()
        if s["type"] == "sample" and not s["is_observed"] and not isinstance(s["fn"], _Subsample)
        and not any(f.name in plates for f in s["cond_indep_stack"])
    ]  # fmt: skip
    expected = num_data / rows
    unscaled = [s for s in observed if abs(float(s["scale"]) / expected - 1) > SCALE_RTOL]
    if not global_sites or not unscaled:
        return []
    site = unscaled[0]
    found = float(site["scale"])
    plate = next((f.name for f in site["cond_indep_stack"] if f.name in plates), "data")
    shown = ", ".join(repr(n) for n in global_sites[:4]) + (
        ", ..." if len(global_sites) > 4 else ""
    )
    warnings.warn(
        f"minibatches of {rows} of {num_data} data: observed site {site['name']!r} is scaled by "
        f"{found:g}, not N / B = {expected:g}, while the global latent site(s) "
        f"{shown} sit outside its plate: the prior outweighs the data {expected / found:g}x and "
        f"the posterior comes out too wide. Fix: pyro.plate({plate!r}, {num_data}, "
        f"subsample_size={rows}) (or subsample=idx), or wrap the likelihood in "
        f"poutine.scale(scale={num_data} / {rows})",
        UserWarning,
        stacklevel=2,
    )
    return [s["name"] for s in unscaled]


def check_plateau(history: Any, window: int | None = None) -> bool:
    """Whether the training ELBO (a :class:`~pyro_reparam.train.History` or a sequence per
    epoch) stopped improving: over its last ``window`` epochs (default half the run, checked
    from ``MIN_PLATEAU_EPOCHS`` epochs on) the fitted line gains less than the residual sd."""
    elbo = np.asarray(getattr(history, "train_elbo", history), dtype=float)
    n = elbo.size
    window = n // 2 if window is None else window
    if n < MIN_PLATEAU_EPOCHS or window < 3 or window > n:
        return False
    tail = elbo[-window:]
    t = np.arange(window)
    slope, intercept = np.polyfit(t, tail, 1)
    gain = slope * (window - 1)
    noise = float(np.std(tail - (slope * t + intercept), ddof=2))
    if gain >= noise + 1e-9 * (1 + np.abs(tail).mean()):
        return False
    since = n - window
    warnings.warn(
        f"the training ELBO stopped improving by epoch {since} of {n}: over the last {window} "
        f"epochs it changed by {gain:+.3g} nats per datum, within its epoch-to-epoch noise "
        f"({noise:.3g}). If the fit is poor, the optimizer is stuck: raise the learning rate, "
        "look for posterior collapse or a high-variance score-function gradient; if it is good, "
        f"{since} epochs suffice",
        UserWarning,
        stacklevel=2,
    )
    return True
