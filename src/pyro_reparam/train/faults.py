"""What went wrong in a step, said in one line: the step, the sites with non-finite
log-densities or values, the data outside a likelihood's support, the parameters with a
non-finite gradient or value (of this run only), and the last good checkpoint (kept)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyro
import pyro.poutine as poutine
import torch

from pyro_reparam.train.probe import support_violations


class TrainingError(RuntimeError):
    """Training stopped on a non-finite loss, gradient or parameter, or on data a likelihood
    cannot score; the one-line message says where, why and what to try."""


def nonfinite(named: Sequence[tuple[str, torch.Tensor]]) -> list[str]:
    """The names whose tensors hold NaN or inf (one device sync for all of them)."""
    if not named:
        return []
    flags = torch.stack([torch.isfinite(t).all() for _, t in named]).cpu()
    return [] if bool(flags.all()) else [n for (n, _), ok in zip(named, flags, strict=True)
                                         if not ok]  # fmt: skip


def error_kind(error: ValueError) -> str | None:
    """``"support"`` for Pyro's validation of a value outside a distribution's support,
    ``"parameter value"`` for that of an invalid distribution parameter, else ``None``."""
    text = str(error)
    if "Expected value argument" in text:  # Pyro prefixes "Error ... at site 'x':"
        return "support"
    if "invalid values" in text or "nan" in text.lower():
        return "parameter value"
    return None


def where(epoch: int, step: int) -> str:
    return f"epoch {epoch + 1}, step {step}"


def kept(checkpoint: Path | None) -> str:
    return f"; the last good checkpoint is {checkpoint} (kept)" if checkpoint else ""


def fail(run_params: Sequence[str], model, guide, batch, epoch, step, what: str,
         checkpoint: Path | None, error: BaseException | None = None,
         bad: Sequence[str] = ()):  # fmt: skip
    """Raise :class:`TrainingError` for ``what`` at ``epoch``, ``step``: ``"loss"``,
    ``"gradient"`` or ``"parameter"`` (non-finite; ``bad`` names the parameters),
    ``"support"`` (a value outside a distribution's support) or ``"parameter value"`` (an
    invalid distribution parameter, from Pyro's validation)."""
    names = ", ".join(map(repr, bad[:6]))
    if what == "parameter":
        raise TrainingError(
            f"the update at {where(epoch, step)} made {names} non-finite though the loss and "
            f"gradient were finite (the step overflowed){kept(checkpoint)}. Lower the learning "
            "rate or set clip_norm=..."
        )
    if what == "support":
        first = next((ln for ln in str(error).splitlines() if "Expected value" in ln), "")
        lines = _support_lines(model, guide, batch) or [first[:200]]
        raise TrainingError(
            f"at {where(epoch, step)}, {'; '.join(lines)}{kept(checkpoint)}. Transform the "
            "data, or use a likelihood whose support covers them"
        ) from error
    what = {"gradient": f"gradient of {names} with a finite loss",
            "parameter value": "distribution parameter"}.get(what, what)  # fmt: skip
    suspects = nonfinite_sites(model, guide, batch, run_params)
    raise TrainingError(
        f"non-finite {what} at {where(epoch, step)} ({suspects}){kept(checkpoint)}. Lower the "
        "learning rate, set clip_norm=..., or check the model at these sites"
    ) from error


def _traces(model, guide, batch):
    with torch.no_grad(), pyro.validation_enabled(False):
        guide_tr = poutine.trace(guide).get_trace(*batch)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*batch)
    return guide_tr, model_tr


def _support_lines(model, guide, batch) -> list[str]:
    try:
        _, model_tr = _traces(model, guide, batch)
    except (ValueError, RuntimeError):
        return []
    return support_violations(model_tr, observed=True) + support_violations(
        model_tr, observed=False
    )


def nonfinite_sites(model, guide, batch, run_params: Sequence[str]) -> str:
    """The sample sites whose log-densities or values are non-finite on a re-run, and the
    parameters of this run (``run_params``) that are."""
    store = dict(pyro.get_param_store().named_parameters())
    bad_params = nonfinite([(n, store[n].detach()) for n in sorted(run_params) if n in store])
    bad_sites = []
    try:
        guide_tr, model_tr = _traces(model, guide, batch)
        for label, tr in (("guide", guide_tr), ("model", model_tr)):
            for name, site in tr.nodes.items():
                if site["type"] != "sample":
                    continue
                value = site["value"]
                lp = site["fn"].log_prob(value)
                if not torch.isfinite(lp).all() or not torch.isfinite(value).all():
                    bad_sites.append(f"{label} site {name!r}")
    except (ValueError, RuntimeError) as e:  # invalid distribution parameters
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        bad_sites.append(f"tracing failed: {first[:120]}")
    parts = []
    if bad_sites:
        parts.append("non-finite log-density or value at " + ", ".join(bad_sites))
    if bad_params:
        parts.append("non-finite parameters " + ", ".join(bad_params[:6]))
    return "; ".join(parts) or "no site is non-finite on a re-run: a rare draw"
