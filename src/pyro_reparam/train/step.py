"""One SVI step of :func:`~pyro_reparam.train.fit`: exactly Pyro's ``SVI.step``
(``elbo.loss_and_grads`` on the batch, then the optimizer on the parameters the step touched),
with the parameters in the order of their names, finiteness checks of the loss, the gradients
(optionally clipped) and the updated parameters, and the data-parallel reduction.

Per-step costs kept small (``benchmarks/fit_overhead.py``): each finiteness check is one
reduction per tensor (sums, or one fused 2-norm call for many small tensors) and one device
sync (:mod:`~pyro_reparam.train.finite`; the names are looked up only on failure); the
optimizer steps all parameters in one call (:mod:`~pyro_reparam.train.fused`); gradients are
reset to ``None`` rather than to fresh zeros (a parameter the next backward misses gets its
zeros then, as under ``SVI``); an ELBO that knows its parameters (``step_params(model, guide,
*batch)``, :func:`direct_params`) is not traced for them."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro.poutine as poutine
import torch
from pyro import infer
from pyro.infer import ELBO

from pyro_reparam.train.distributed import Distributed
from pyro_reparam.train.faults import TrainingError, nonfinite
from pyro_reparam.train.finite import all_finite


@dataclass(frozen=True)
class Step:
    """What a step did: the loss (summed or averaged over ranks), the names of its parameters,
    and what was non-finite (``"loss"``, ``"gradient"``, ``"parameter"``; ``bad`` names them),
    in which case the optimizer did not run (``"parameter"``: it ran and made them so)."""

    loss: float
    names: tuple[str, ...]
    fault: str | None = None
    bad: tuple[str, ...] = ()
    interrupted: bool = False


def svi_step(elbo: ELBO, optim, model, guide, batch: tuple, clip_norm: float | None,
             dist: Distributed | None, average: bool, requested: Callable[[], bool],
             zeroed: set[str]) -> Step:  # fmt: skip
    """One step; under ``dist`` the ranks agree on its outcome (see
    :mod:`~pyro_reparam.train.distributed`); ``average``: how their gradients combine;
    ``requested()``: whether a stop was asked for, read after the step's own computation so
    that a signal landing inside the step stops the run after it on every rank.

    ``zeroed``: the parameters that had a gradient at an earlier step (updated here). Pyro's
    ``SVI.step`` resets gradients to zero tensors, so such a parameter that this step's
    backward does not reach is still handed to the optimizer with a zero gradient (Adam's
    moments move it); the step gives it that zero gradient, and resets every gradient to
    ``None`` otherwise (no zeros allocated for the others)."""
    named = direct_params(elbo, model, guide, batch)
    try:
        if named is None:
            with poutine.trace(param_only=True) as tape:
                loss = float(elbo.loss_and_grads(model, guide, *batch))
            named = params_by_name(tape.trace)
        else:
            loss = float(elbo.loss_and_grads(model, guide, *batch))
    except Exception:
        if dist is not None:  # tell the other ranks, which would wait for this one
            dist.exchange(math.nan, ["failed"], requested(), failed=True)
        raise
    for n, p in named:
        if p.grad is None and n in zeroed:
            p.grad = torch.zeros_like(p)
    names = tuple(n for n, _ in named)
    grads = [(n, p) for n, p in named if p.grad is not None]
    zeroed.update(n for n, _ in grads)
    interrupted = requested()
    try:
        if dist is not None:
            info = dist.exchange(loss, [f"{n} {tuple(p.shape)}" for n, p in grads], interrupted)
            _check_ranks(info, loss, names)
            interrupted = info.interrupted
            loss = sum(info.losses) / (dist.world if average else 1)
        if not math.isfinite(loss):
            return Step(loss, names, "loss", interrupted=interrupted)
        if dist is not None:
            dist.reduce_grads([p for _, p in grads], average)
        if not all_finite([p.grad for _, p in grads]):
            bad = nonfinite([(n, p.grad) for n, p in grads])
            return Step(loss, names, "gradient", tuple(bad), interrupted)
        if clip_norm is not None and grads:
            torch.nn.utils.clip_grad_norm_([p for _, p in grads], clip_norm)
        params = [p for _, p in named]
        optim(params)
        if all_finite(params):
            return Step(loss, names, None, (), interrupted)
        bad = nonfinite([(n, p.detach()) for n, p in named])
        return Step(loss, names, "parameter", tuple(bad), interrupted)
    finally:
        for _, p in named:  # SVI's zero_grads, the zeros given only where used (above)
            p.grad = None


def _check_ranks(info, loss: float, names: tuple[str, ...]) -> None:
    if info.failed:
        raise TrainingError(
            f"rank {info.failed[0]} failed at this step (its own error says why); this rank "
            "stopped with it"
        )
    if not info.same_params:
        raise TrainingError(
            "fit: the ranks' steps gave gradients to different parameters "
            f"(this rank: {list(names)[:6]}); the model or guide takes a data- or "
            "rank-dependent path: make every rank create and use the same parameters"
        )
    bad = [r for r, v in enumerate(info.losses) if not math.isfinite(v)]
    if bad and math.isfinite(loss):
        raise TrainingError(
            f"rank {bad[0]} had a non-finite loss at this step (its own error says where); "
            "this rank stopped with it"
        )


def direct_params(elbo: ELBO, model, guide, batch: tuple) -> list[tuple[str, torch.Tensor]] | None:
    """``elbo.step_params(model, guide, *batch)`` for an ELBO that knows the parameters of its
    step on that pair (the ready models' direct ELBOs, once the param store holds their
    parameters: :mod:`~pyro_reparam.models.registration`), so the step needs no param trace;
    ``None``: trace it, as ``SVI.step`` does."""
    get = getattr(elbo, "step_params", None)
    return get(model, guide, *batch) if callable(get) else None


def params_by_name(trace) -> list[tuple[str, torch.Tensor]]:
    """The unconstrained parameters of a param trace, each once, in the order of their names."""
    seen: dict[int, tuple[str, torch.Tensor]] = {}
    for name in sorted(trace.nodes):
        p = trace.nodes[name]["value"].unconstrained()
        seen.setdefault(id(p), (name, p))
    return list(seen.values())


class CachedJitTraceMeanField_ELBO(infer.JitTraceMeanField_ELBO):
    """Pyro 1.9's ``JitTraceMeanField_ELBO`` compiled once: its own cache check looks for an
    attribute it never sets, so it re-traces and recompiles on every step (about 5x slower
    than not compiling); this one reuses the compiled loss."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        compiled = getattr(self, "_differentiable_loss", None)
        if compiled is None:
            return super().differentiable_loss(model, guide, *args, **kwargs)
        kwargs["_pyro_model_id"] = id(model)  # compiled once per model and guide, as Pyro's
        kwargs["_pyro_guide_id"] = id(guide)
        return compiled(*args, **kwargs)


JIT_TWINS = {
    infer.Trace_ELBO: infer.JitTrace_ELBO,
    infer.TraceMeanField_ELBO: CachedJitTraceMeanField_ELBO,
    infer.TraceGraph_ELBO: infer.JitTraceGraph_ELBO,
    infer.TraceEnum_ELBO: infer.JitTraceEnum_ELBO,
}


def _jit_routed(twin: ELBO, plan):
    """A routed ELBO around a compiled ``twin`` that hands it the same routed guide at every
    step: Pyro's JIT ELBOs compile once per model and guide *object*, and a plain routed ELBO
    wraps the guide anew at each call (which would recompile at every step)."""
    from pyro_reparam.routing.build import RoutedELBO

    class JitRoutedELBO(RoutedELBO):
        _last: tuple | None = None

        def _guide(self, guide):
            if self._last is None or self._last[0] is not guide:
                self._last = (guide, super()._guide(guide))
            return self._last[1]

    return JitRoutedELBO(twin, plan)


NO_JIT_NOTE = (
    "jit=True: {name} has no TorchScript twin, and it is run uncompiled. Its Rao-Blackwellized "
    "score function finds each site's downstream cost by provenance tracking (a Python tensor "
    "subclass) and its baselines keep Python-side state updated per step; torch.jit.trace "
    "records neither (see benchmarks/fit_overhead.py for what torch.compile gives instead)"
)


def jit_twin(elbo: ELBO, say=None) -> ELBO:
    """The TorchScript-compiled twin of ``elbo`` (same particles and plate nesting).

    Pyro's ``Trace_ELBO``, ``TraceMeanField_ELBO``, ``TraceGraph_ELBO``, ``TraceEnum_ELBO`` have
    one (``JitTrace_ELBO``, ...). A routed ELBO (``plan.elbo()``, what ``fit`` builds when
    ``elbo=None``) keeps its plan, its guide routing and its linear-layer handler around the
    twin of its inner ELBO. The plugin's score-function ELBOs (``ScoreFunctionELBO``, alone or
    routed) have none: they are returned as they are and ``say`` is told why (one line).
    Anything else is refused."""
    inner = getattr(elbo, "inner", None)
    plan = getattr(elbo, "plan", None)
    if isinstance(inner, ELBO) and plan is not None:  # a RoutedELBO
        from pyro_reparam.routing.build import RoutedELBO

        if isinstance(elbo, RoutedELBO):
            twin = jit_twin(inner, say)
            return elbo if twin is inner else _jit_routed(twin, plan)
    if type(elbo) in JIT_TWINS.values():
        return elbo
    from pyro_reparam.estimators import ScoreFunctionELBO

    if isinstance(elbo, ScoreFunctionELBO):
        if say is not None:
            say(NO_JIT_NOTE.format(name=type(elbo).__name__))
        return elbo
    twin = JIT_TWINS.get(type(elbo))
    if twin is None:
        raise ValueError(
            f"fit: jit=True compiles {', '.join(c.__name__ for c in JIT_TWINS)} (and routed "
            f"ELBOs built on them); this run's ELBO is {type(elbo).__name__}. Pass one of those "
            "as elbo=..., or jit=False"
        )
    return twin(
        num_particles=elbo.num_particles,
        max_plate_nesting=elbo.max_plate_nesting,
        vectorize_particles=elbo.vectorize_particles,
    )
