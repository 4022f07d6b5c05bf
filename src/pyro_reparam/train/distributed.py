"""Distributed data parallel for :func:`~pyro_reparam.train.fit` under ``torchrun``.

Each of ``W`` ranks takes every ``W``-th row of each global batch; after each backward pass
the gradients are averaged with one ``torch.distributed.all_reduce`` over a flat buffer, which
is what ``DistributedDataParallel`` does (Pyro's parameters live in the param store, not in one
``nn.Module``, so the all-reduce is called directly). The parameters are ordered by name, never
by a Python set (whose order is the memory addresses', different in every process).
"""

from __future__ import annotations

import os

import pyro
import torch


class Distributed:
    """Rank, world size and the collectives of a ``torchrun`` process group (gloo or nccl)."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    @classmethod
    def detect(cls, distributed: bool | None, device: torch.device) -> Distributed | None:
        launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        if distributed is None:
            distributed = launched and int(os.environ["WORLD_SIZE"]) > 1
        if not distributed:
            return None
        if not launched:
            raise ValueError(
                "fit: distributed=True but this process was not started by torchrun; launch "
                "with `torchrun --nproc_per_node=N script.py`"
            )
        import torch.distributed as tdist

        if not tdist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            tdist.init_process_group(backend)
        return cls(tdist.get_rank(), tdist.get_world_size())

    def average_grads(self, grads: list[torch.Tensor]) -> None:
        """Average the ``.grad`` of ``grads`` (the same order on every rank) over the ranks."""
        import torch.distributed as tdist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        flat = _flatten_dense_tensors([p.grad for p in grads])
        tdist.all_reduce(flat)
        flat /= self.world
        for p, g in zip(
            grads, _unflatten_dense_tensors(flat, [p.grad for p in grads]), strict=True
        ):
            p.grad.copy_(g)

    def broadcast_params(self) -> None:
        import torch.distributed as tdist

        store = pyro.get_param_store()
        with torch.no_grad():
            for name in sorted(store.keys()):
                tdist.broadcast(store._params[name].data, src=0)

    def mean(self, value: float) -> float:
        """The mean over ranks (each rank's loss estimates the same global quantity)."""
        import torch.distributed as tdist

        t = torch.tensor([value], dtype=torch.float64)
        tdist.all_reduce(t)
        return t.item() / self.world
