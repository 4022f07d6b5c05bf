"""One optimizer call per step for all of a step's parameters, with Pyro's per-parameter state.

A ``pyro.optim`` optimizer (:class:`~pyro.optim.PyroOptim`) keeps one torch optimizer per
parameter, so a step with ``P`` parameters makes ``P`` ``torch.optim.Optimizer.step`` calls, each
with its own hook, profiler and bookkeeping overhead; on a small network that is a large part
of the step (``benchmarks/bnn_speed.py``). :class:`FusedStep` steps them with *one* call of an
optimizer of the same class whose single parameter group holds all of them and whose state is
the per-parameter optimizers' own state dicts (the same objects, updated in place). So
``optim.get_state()``, checkpoints and resumes see exactly what per-parameter steps leave, and
the arithmetic is the same update per tensor: on the CPU the same numbers, bit for bit
(tests/train/test_fused.py). Where the user left ``foreach`` to torch (``None``, which on the CPU
means the per-tensor loop), the combined optimizer runs torch's multi-tensor (``foreach``)
kernels: the same operations per tensor in one Python pass.

Fused only where that holds: a plain ``PyroOptim`` (no LR scheduler) of an optimizer class in
:data:`FUSABLE` whose parameters all have their optimizer already (the first step of a
parameter goes through ``PyroOptim.__call__``, which makes it and loads any waiting state), one
group each, the same hyperparameters (plain numbers, compared at every step, so an ``lr`` a
callback changes is seen), and no optimizer hooks (global or per-parameter). Anything else
steps as Pyro does.

``ClippedAdam`` (``pyro.optim.ClippedAdam``, what the ready models train with) is stepped with
``torch._foreach_*`` ops over all parameters, the same operations in the same order as
``ClippedAdam.step`` per tensor (on the CPU, foreach ops run exactly those per-tensor kernels).
"""

from __future__ import annotations

import inspect
import math

import torch
from pyro.optim import PyroOptim
from pyro.optim.clipped_adam import ClippedAdam
from torch.optim import optimizer as _torch_optimizer

FUSABLE: tuple[type, ...] = (
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.SGD,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
    ClippedAdam,
)
"""Optimizers whose state is per parameter and whose step treats each parameter alone."""

_PLAIN = (bool, int, float, str, type(None))


def _plain(value) -> bool:
    return isinstance(value, _PLAIN) or (
        isinstance(value, tuple) and all(isinstance(v, _PLAIN) for v in value)
    )


class FusedStep:
    """``FusedStep(optim)(params)``: what ``optim(params)`` does, in one optimizer call when
    it can be (see the module docstring). :attr:`fused` counts the fused steps."""

    def __init__(self, optim: PyroOptim):
        self.optim = optim
        cls = optim.pt_optim_constructor
        self.fusable = (
            type(optim) is PyroOptim and isinstance(cls, type) and issubclass(cls, FUSABLE)
        )
        self._key: tuple[tuple[int, ...], tuple[int, ...]] | None = None
        self._combined: torch.optim.Optimizer | None = None
        self._groups: list[dict] = []
        self._own: dict = {}
        self.fused = 0

    def __call__(self, params: list[torch.Tensor]) -> None:
        if not self._step_fused(params):
            self.optim(params)

    def _step_fused(self, params: list[torch.Tensor]) -> bool:
        if not self.fusable or not params:
            return False
        objs = self.optim.optim_objs
        if any(p not in objs for p in params):
            return False  # PyroOptim makes the new parameters' optimizers (and loads state)
        if _torch_optimizer._global_optimizer_pre_hooks or (
            _torch_optimizer._global_optimizer_post_hooks
        ):
            return False
        if any(objs[p]._optimizer_step_pre_hooks or objs[p]._optimizer_step_post_hooks
               for p in params):  # fmt: skip
            return False  # hooks of the per-parameter optimizers run in their own steps
        # a parameter without a gradient is skipped by every optimizer's step (its group still
        # decays ClippedAdam's lr, below): the combined optimizer holds those with one
        stepped = [p for p in params if p.grad is not None]
        if not stepped:
            return False
        key = (tuple(id(p) for p in params), tuple(id(p) for p in stepped))
        if key != self._key and not self._build(params, stepped):
            return False
        hyper = self._hyper()
        if hyper is None:
            return False
        clips = self.optim.grad_clip
        for p in stepped:
            clip = clips.get(p)
            if clip is not None:
                clip(p)
        group = self._combined.param_groups[0]
        group.update(hyper)
        group.update(self._own)
        if not (isinstance(self._combined, ClippedAdam) and _clipped_adam_foreach(
                self._combined, stepped)):  # fmt: skip
            self._combined.step()
        for p in stepped:  # state the step made: the per-parameter optimizer's own
            st, sub_state = self._combined.state[p], objs[p].state
            if st and sub_state.get(p) is not st:
                sub_state[p] = st
        changed = {k: group[k] for k in hyper if k not in self._own and group[k] is not hyper[k]}
        if changed:  # ClippedAdam decays its lr in the group: every parameter's group
            for g in self._groups:
                g.update(changed)
        self.fused += 1
        return True

    def _build(self, params: list[torch.Tensor], stepped: list[torch.Tensor]) -> bool:
        """The combined optimizer over ``stepped`` (those of ``params`` with a gradient),
        sharing each one's state dict; the groups of all ``params`` share its hyperparameters."""
        self._key, self._combined = None, None
        groups = []
        for p in params:
            sub = self.optim.optim_objs[p]
            if not isinstance(sub, FUSABLE) or len(sub.param_groups) != 1:
                return False
            group = sub.param_groups[0]
            if len(group["params"]) != 1 or group["params"][0] is not p:
                return False
            groups.append(group)
        self._groups = groups
        first = self._hyper()
        if first is None:
            return False
        cls = type(self.optim.optim_objs[params[0]])
        # the multi-tensor kernels where the user left the choice to torch (which picks the
        # per-tensor loop on the CPU): the same operations per tensor, the same numbers, with
        # one Python pass for all tensors instead of one per tensor
        plain_loop = "foreach" in first and first["foreach"] is None and not any(
            first.get(k) for k in ("differentiable", "capturable", "fused"))  # fmt: skip
        self._own = {"foreach": True} if cls is not ClippedAdam and plain_loop else {}
        # group keys the constructor does not take (AdamW's decoupled_weight_decay) are set
        # in the group at each step, as the per-parameter groups hold them
        accepted = inspect.signature(cls).parameters
        try:
            combined = cls(list(stepped), **{k: v for k, v in {**first, **self._own}.items()
                                            if k in accepted})  # fmt: skip
        except (TypeError, ValueError):
            return False
        for p in stepped:  # the same dict object; none made where the optimizer keeps none
            sub_state = self.optim.optim_objs[p].state
            combined.state[p] = sub_state.get(p, {})
        self._key = (tuple(id(p) for p in params), tuple(id(p) for p in stepped))
        self._combined = combined
        return True

    def _hyper(self) -> dict | None:
        """The hyperparameters every group shares, or ``None`` if they differ or are not plain
        numbers (a tensor ``lr``, say)."""
        first = {k: v for k, v in self._groups[0].items() if k != "params"}
        if not all(_plain(v) for v in first.values()):
            return None
        for g in self._groups[1:]:
            if len(g) != len(first) + 1 or any(g.get(k) != v for k, v in first.items()):
                return None
        return first


def _clipped_adam_foreach(optim: ClippedAdam, params: list[torch.Tensor]) -> bool:
    """``optim.step()`` for one group whose parameters all have a gradient and state, as
    foreach ops; ``False`` (nothing done) where it does not apply (weight decay, centered
    variance, a parameter without gradient or state yet, mixed devices or dtypes)."""
    group = optim.param_groups[0]
    if group["weight_decay"] != 0 or group["centered_variance"]:
        return False
    states = [optim.state[p] for p in params]
    if any(p.grad is None or not st for p, st in zip(params, states, strict=True)):
        return False
    if len({(p.device, p.dtype) for p in params}) != 1:
        return False
    group["lr"] *= group["lrd"]
    clip, lr, eps = group["clip_norm"], group["lr"], group["eps"]
    beta1, beta2 = group["betas"]
    grads = [p.grad.data for p in params]
    exp_avgs = [st["exp_avg"] for st in states]
    exp_avg_sqs = [st["exp_avg_sq"] for st in states]
    sizes = []
    for st in states:
        st["step"] += 1
        step = st["step"]
        sizes.append(-(lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)))
    with torch.no_grad():
        torch._foreach_clamp_min_(grads, -clip)
        torch._foreach_clamp_max_(grads, clip)
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denoms, eps)
        torch._foreach_addcdiv_([p.data for p in params], exp_avgs, denoms, sizes)
    return True
