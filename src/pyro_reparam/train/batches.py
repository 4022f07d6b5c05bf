"""Minibatches for :func:`~pyro_reparam.train.fit`: tensors, a ``Dataset`` or a ``DataLoader``,
checked on the way in, shuffled reproducibly per ``(seed, epoch)``, moved to the device.

A data set of tensors or a ``Dataset`` is shuffled each epoch with a permutation drawn from a
generator seeded by ``seed * 1_000_003 + epoch``, so a run can resume mid-epoch exactly; under
distributed data parallel each of ``W`` ranks takes every ``W``-th row of each global batch
(the last batch must have at least ``W`` rows).

A ``DataLoader`` is used as given (under torchrun it needs a ``DistributedSampler``, whose
``set_epoch`` is called each epoch). Its shuffling draws from torch's global RNG when the
epoch's iterator is made; a run resumed mid-epoch remakes it from the RNG state of the epoch's
start, which the checkpoint keeps, so the epoch sees the same order.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from pyro_reparam.train.finite import all_finite
from pyro_reparam.train.rng import rng_state, set_rng_state


class Batches:
    """Shuffled minibatches of tensors or a Dataset, reproducible per (seed, epoch)."""

    def __init__(self, data, batch_size: int, seed: int, device: torch.device, dist_ctx, arg):
        self.device, self.seed, self.dist = device, seed, dist_ctx
        self.loader = data if isinstance(data, DataLoader) else None
        self.tensors = None
        self.dataset = None
        if self.loader is not None:
            self.num_data = len(self.loader.dataset)
            self.batch_size = self.loader.batch_size or 1
            sample = next(iter(self.loader))
            self.arity = len(sample) if isinstance(sample, (tuple, list)) else 1
            if dist_ctx is not None and not hasattr(self.loader.sampler, "num_replicas"):
                raise ValueError(
                    f"fit: under torchrun a DataLoader {arg} needs a DistributedSampler (else "
                    "every rank sees every batch); pass the tensors or a Dataset instead"
                )
        elif _is_tensors(data):
            self._init_tensors(data, arg)
        elif isinstance(data, Dataset):
            self.dataset = data
            self.num_data = len(data)
            sample = data[0] if self.num_data else ()
            self.arity = len(sample) if isinstance(sample, (tuple, list)) else 1
        else:
            raise TypeError(
                f"fit: {arg} must be a tensor, a tuple of tensors, a Dataset or a DataLoader, "
                f"got {type(data).__name__}"
            )
        if self.num_data == 0:
            raise ValueError(f"fit: {arg} is empty")
        if self.loader is None:
            world = dist_ctx.world if dist_ctx is not None else 1
            if batch_size % world:
                raise ValueError(
                    f"fit: batch_size={batch_size} is the global batch and must be divisible by "
                    f"the {world} distributed ranks"
                )
            self.batch_size = min(batch_size, self.num_data)
            last = self.num_data % self.batch_size
            if 0 < last < world:
                raise ValueError(
                    f"fit: the last batch of {arg} has {last} row(s) for {world} distributed "
                    f"ranks; pick batch_size so that {self.num_data} % batch_size is 0 or >= "
                    f"{world}"
                )

    def _init_tensors(self, data, arg: str) -> None:
        tensors = (data,) if isinstance(data, torch.Tensor) else tuple(data)
        tensors = tuple(checked_tensor(t, f"{arg}[{i}]", arg) for i, t in enumerate(tensors))
        sizes = {t.shape[0] for t in tensors}
        if len(sizes) != 1:
            raise ValueError(
                f"fit: the tensors in {arg} have different numbers of rows {sorted(sizes)}; "
                "row i of each must belong to datum i"
            )
        self.num_data = sizes.pop()
        self.arity = len(tensors)
        self.tensors = tuple(t.to(self.device) for t in tensors)

    def __len__(self) -> int:
        if self.loader is not None:
            return len(self.loader)
        return -(-self.num_data // self.batch_size)

    def _permutation(self, epoch: int, shuffle: bool) -> torch.Tensor:
        if not shuffle:
            return torch.arange(self.num_data)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_data, generator=g)

    def first(self) -> tuple:
        return next(iter(self.epoch(0, 0)))

    def epoch(self, epoch: int, skip: int, shuffle: bool = True, epoch_rng=None):
        """The batches of ``epoch`` after the first ``skip``, each a tuple on the device;
        ``epoch_rng``: the RNG state at the epoch's start (a DataLoader's order comes from it)."""
        if self.loader is not None:
            yield from self._loader_epoch(epoch, skip, epoch_rng)
            return
        perm = self._permutation(epoch, shuffle)
        for start in range(skip * self.batch_size, self.num_data, self.batch_size):
            idx = perm[start : start + self.batch_size]
            if self.dist is not None:
                idx = idx[self.dist.rank :: self.dist.world]
            if self.tensors is not None:
                idx = idx.to(self.device)
                yield tuple(t.index_select(0, idx) for t in self.tensors)  # 5x t[idx] on CPU
            else:
                rows = [self.dataset[int(i)] for i in idx]
                rows = [r if isinstance(r, (tuple, list)) else (r,) for r in rows]
                yield self._to_device(tuple(torch.stack(col) for col in zip(*rows, strict=True)))

    def _loader_epoch(self, epoch: int, skip: int, epoch_rng):
        if hasattr(self.loader.sampler, "set_epoch"):
            self.loader.sampler.set_epoch(epoch)
        if skip >= len(self.loader):
            return
        now = rng_state() if skip and epoch_rng is not None else None
        if now is not None:
            set_rng_state(epoch_rng)
        batches = iter(self.loader)
        for _ in range(skip):
            next(batches)
        if now is not None:
            set_rng_state(now)
        for batch in batches:
            yield self._to_device(batch)

    def _to_device(self, batch) -> tuple:
        batch = batch if isinstance(batch, (tuple, list)) else (batch,)
        non_blocking = self.device.type == "cuda"
        return tuple(
            t.to(self.device, non_blocking=non_blocking) if isinstance(t, torch.Tensor) else t
            for t in batch
        )


def _is_tensors(data) -> bool:
    if isinstance(data, torch.Tensor):
        return True
    return (
        isinstance(data, (tuple, list))
        and bool(data)
        and all(isinstance(t, torch.Tensor) for t in data)
    )


def checked_tensor(t: torch.Tensor, name: str, arg: str) -> torch.Tensor:
    """``t`` if it has one row per datum and no NaN or inf, else a ValueError naming ``name``."""
    if t.dim() == 0:
        raise ValueError(f"fit: {name} is a scalar; {arg} needs one row per datum")
    if t.is_floating_point() and not all_finite([t]):
        bad = (~torch.isfinite(t)).reshape(t.shape[0], -1).any(1).nonzero()[:5].flatten().tolist()
        raise ValueError(
            f"fit: {name} contains NaN or inf (rows {bad}...); clean or drop those rows"
        )
    return t
