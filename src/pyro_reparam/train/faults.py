"""Non-finite losses and gradients: the check after each step and the diagnosis that names
the step, the sites with non-finite log-densities or values, and the parameters."""

from __future__ import annotations

from pathlib import Path

import pyro
import pyro.poutine as poutine
import torch


class TrainingError(RuntimeError):
    """Training stopped on a non-finite loss or gradient; the message says where and why."""


def finite_grads(params: list[torch.Tensor], clip_norm: float | None) -> bool:
    """Clip to ``clip_norm`` if given; True when every gradient entry is finite (one sync)."""
    if clip_norm is not None:
        return bool(torch.isfinite(torch.nn.utils.clip_grad_norm_(params, clip_norm)))
    return bool(torch.isfinite(torch.stack([p.grad.sum() for p in params]).sum()))


def is_invalid_parameter_error(error: ValueError) -> bool:
    """Whether ``error`` is Pyro's validation of non-finite distribution parameters."""
    return "invalid values" in str(error) or "nan" in str(error).lower()


def fail(model, guide, batch, epoch, step, what, last_checkpoint: Path | None, error=None):
    """Raise :class:`TrainingError` for a non-finite ``what`` at ``epoch``, ``step``."""
    suspects = nonfinite_sites(model, guide, batch)
    where = f"epoch {epoch + 1}, step {step}"
    keep = f"; the last good checkpoint is {last_checkpoint}" if last_checkpoint else ""
    raise TrainingError(
        f"non-finite {what} at {where} ({suspects}){keep}. Lower the learning rate, set "
        "clip_norm=..., or check the model at these sites."
    ) from error


def nonfinite_sites(model, guide, batch) -> str:
    """Name the sites whose log-densities or values, and the params, that are non-finite."""
    bad_params = [
        name for name, p in pyro.get_param_store()._params.items() if not torch.isfinite(p).all()
    ]
    bad_sites = []
    try:
        with torch.no_grad(), pyro.validation_enabled(False):
            guide_tr = poutine.trace(guide).get_trace(*batch)
            model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*batch)
        for label, tr in (("guide", guide_tr), ("model", model_tr)):
            for name, site in tr.nodes.items():
                if site["type"] != "sample":
                    continue
                value = site["value"]
                lp = site["fn"].log_prob(value)
                if not torch.isfinite(lp).all() or not torch.isfinite(value).all():
                    bad_sites.append(f"{label} site {name!r}")
    except (ValueError, RuntimeError) as e:  # invalid distribution parameters
        bad_sites.append(f"tracing failed: {str(e).splitlines()[0][:120]}")
    parts = []
    if bad_sites:
        parts.append("non-finite log-density or value at " + ", ".join(bad_sites))
    if bad_params:
        parts.append("non-finite parameters " + ", ".join(bad_params[:6]))
    return "; ".join(parts) or "no site is non-finite on a re-run: a rare draw"
