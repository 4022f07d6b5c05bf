"""Data parallel training for :func:`~pyro_reparam.train.fit` under ``torchrun``.

One host, two processes::

    torchrun --nproc-per-node=2 train.py

Several hosts (run the same line on each; ``HOST0`` is one of them, reachable from all)::

    torchrun --nnodes=2 --nproc-per-node=4 --rdzv-backend=c10d \\
        --rdzv-endpoint=HOST0:29400 --rdzv-id=my-run train.py

``fit`` then finds ``RANK``/``WORLD_SIZE`` in the environment and joins the process group
(gloo on CPU, nccl on CUDA, where rank ``r`` uses ``cuda:LOCAL_RANK``).

What each step does: rank ``r`` of ``W`` takes every ``W``-th row of each global batch and runs
the ELBO on it. The ranks then exchange one small tensor (their losses, a digest of the names
of the parameters that got a gradient, and whether Ctrl-C was pressed), so that every rank
makes the same decision: a non-finite loss anywhere stops all of them, parameters that differ
between ranks are an error, an interrupt stops all of them after the same step. Each gradient
is then all-reduced with ``torch.distributed.all_reduce``, in the order of the parameters'
names (never a Python set, whose order is that of memory addresses, different in every
process): averaged when the model scales each batch up to the data set (each rank's loss then
estimates the whole ELBO), summed when it does not (each rank's loss is a part of the batch's
sum; a global latent's prior then enters once per rank, as in one process it enters once per
batch: scale the likelihood by ``N / B`` for such models). The reported ELBO is reduced the
same way, so it equals the one-process value whatever the model's scaling; a running-average
baseline is kept per rank and the history records the mean over ranks, which is the
one-process value (the average is linear).

Random numbers: every rank starts from the same ``seed``, so a global latent (one draw per
step, the weights of a Bayesian network) is the same draw on every rank and ``W`` processes
compute the one-process run, to float rounding (a test checks a six-parameter guide with a
score-function site and its baseline). Local latents of rows at the same position in each
rank's share then see the same noise: unbiased, slightly more variable than in one process.
Each rank's RNG state and ELBO state go into the checkpoint (rank 0 gathers them and alone
writes the file), and each rank gets its own back on resume (rank 0 reads the file and
broadcasts it, so other hosts need no shared disk). A checkpoint resumes with the number of
ranks that wrote it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyro
import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class StepInfo:
    """What the ranks told each other after a step's backward pass."""

    losses: tuple[float, ...]
    same_params: bool
    interrupted: bool
    failed: tuple[int, ...]
    """The ranks whose step raised."""


class Distributed:
    """Rank, world size and the collectives of a ``torchrun`` process group."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    @classmethod
    def detect(
        cls, distributed: bool | None, device: torch.device
    ) -> tuple[Distributed | None, torch.device]:
        """The process group (``None`` outside torchrun) and this rank's device."""
        launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        if distributed is None:
            distributed = launched and int(os.environ["WORLD_SIZE"]) > 1
        if not distributed:
            return None, device
        if not launched:
            raise ValueError(
                "fit: distributed=True but this process was not started by torchrun; launch "
                "with `torchrun --nproc-per-node=N script.py`"
            )
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not tdist.is_initialized():
            tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(tdist.get_rank(), tdist.get_world_size()), device

    def exchange(
        self, loss: float, names: Sequence[str], interrupted: bool, failed: bool = False
    ) -> StepInfo:
        """Share each rank's loss, parameter digest and interrupt and failure flags (one
        all-gather)."""
        row = [loss, _digest(names), float(interrupted), float(failed)]
        mine = torch.tensor(row, dtype=torch.float64)
        mine = mine.to(self._device())
        rows = [torch.empty_like(mine) for _ in range(self.world)]
        tdist.all_gather(rows, mine)
        table = torch.stack(rows).cpu()
        return StepInfo(
            tuple(table[:, 0].tolist()),
            bool((table[:, 1] == table[0, 1]).all()),
            bool(table[:, 2].any()),
            tuple(int(r) for r in table[:, 3].nonzero().flatten().tolist()),
        )

    def reduce_grads(self, params: Sequence[torch.Tensor], average: bool) -> None:
        """All-reduce each ``.grad`` in the given (name) order: the mean over ranks or the sum."""
        handles = [tdist.all_reduce(p.grad, async_op=True) for p in params]
        for handle in handles:
            handle.wait()
        if average:
            for p in params:
                p.grad.div_(self.world)

    def broadcast_params(self, names: Sequence[str]) -> None:
        """Rank 0's values of the parameters ``names`` on every rank (in name order)."""
        store = dict(pyro.get_param_store().named_parameters())
        with torch.no_grad():
            for name in sorted(names):
                tdist.broadcast(store[name].data, src=0)

    def reduce(self, values: dict[str, float], average: bool) -> dict[str, float]:
        """The sum (or mean) over ranks of each value, by sorted key (same keys everywhere)."""
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self._device())
        tdist.all_reduce(t)
        if average:
            t /= self.world
        return dict(zip(keys, t.tolist(), strict=True))

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (``None`` elsewhere)."""
        out = [None] * self.world if self.rank == 0 else None
        tdist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def _device(self) -> torch.device:
        if tdist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def together(dist: Distributed | None, fn: Callable[[], Any]) -> Any:
    """``fn()``; under torchrun an error on any rank is raised on every rank (rather than the
    others waiting for it in the next collective)."""
    try:
        result, error = fn(), None
    except Exception as e:
        result, error = None, e
    if dist is not None:
        mine = None if error is None else f"{type(error).__name__}: {error}"
        others = [m for m in (dist.gather(mine) or []) if m is not None]
        first = dist.broadcast(others[0] if others else None)
        if error is None and first is not None:
            raise RuntimeError(f"fit: another rank failed to start: {first}")
    if error is not None:
        raise error
    return result


def _digest(names: Sequence[str]) -> float:
    """48 bits of the SHA-256 of ``names``: exact in a float64, equal iff the names are (w.h.p.)."""
    return float(int(hashlib.sha256("\n".join(names).encode()).hexdigest()[:12], 16))
