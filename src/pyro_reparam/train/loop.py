"""``fit``: one SVI loop for every model of the plugin and every user model/guide pair.

Each step is exactly Pyro's ``SVI.step`` (``elbo.loss_and_grads`` on the batch, then the
optimizer on the parameters the step touched), plus a finiteness check of the loss and of the
gradient norm (optionally clipped). Per epoch the history records the training ELBO per datum,
``-(sum of step losses) / N`` (the usual convention: the model sums, unscaled, over its batch),
the validation ELBO per datum, the time, and the state of running-average baselines.

Minibatches: ``data`` (a tensor, a tuple of tensors or a ``Dataset``) is shuffled each epoch
with a permutation drawn from a generator seeded by ``(seed, epoch)``, so a run can resume
mid-epoch exactly; each batch is passed to the model and guide as ``model(*batch)``. A
``DataLoader`` is used as given. For a model that scales its minibatch up to the data set
(``pyro.plate("data", N, subsample=...)``), the ELBO figures are ``N`` times a per-datum value.

Distributed data parallel (``torchrun``): each of ``W`` ranks takes every ``W``-th row of the
epoch's permutation, so ``batch_size`` is the *global* batch; after each backward pass the
gradients are averaged with one ``torch.distributed.all_reduce`` over a flat buffer, which is
what ``DistributedDataParallel`` does (Pyro's parameters live in the param store, not in one
``nn.Module``, so the all-reduce is called directly). Averaging matches a single process when
the model scales its minibatch to the data set (the Pyro way above), and the reported ELBO is
likewise the mean over ranks; rank 0 alone writes checkpoints and shows progress.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import ELBO
from pyro.infer.util import zero_grads
from pyro.optim import PyroOptim
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pyro_reparam.train import checkpoint as ckpt

CHECKPOINT_NAME = "checkpoint.pt"


class TrainingError(RuntimeError):
    """Training stopped on a non-finite loss or gradient; the message says where and why."""


@dataclass
class History:
    """Per-epoch records of a :func:`fit` run.

    ``records[i]`` has ``epoch``, ``train_elbo`` (per datum), ``val_elbo`` (or ``None``),
    ``seconds`` and ``baselines`` (running-average baseline values by site, if any).

    Per datum means the epoch's summed batch losses over ``N`` when each batch is a piece of the
    data (local latents, unscaled likelihood), and the mean batch loss over ``N`` when the model
    scales each batch's likelihood up to the data set (``N / B``: global latents, subsampled
    plates), since each such batch loss already estimates the whole ELBO.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    plan: Any = None
    checkpoint: Path | None = None
    stopped_early: bool = False

    @property
    def train_elbo(self) -> list[float]:
        return [r["train_elbo"] for r in self.records]

    @property
    def val_elbo(self) -> list[float | None]:
        return [r["val_elbo"] for r in self.records]

    def plot(self, path: str | Path, title: str = "ELBO") -> Path:
        """Save the train (and validation) ELBO curves as a PNG."""
        from pyro_reparam.plotting import pyplot

        plt = pyplot()
        epochs = [r["epoch"] for r in self.records]
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ax.plot(epochs, self.train_elbo, label="train", marker="." if len(epochs) < 30 else None)
        if any(v is not None for v in self.val_elbo):
            ax.plot(epochs, self.val_elbo, label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel("ELBO per datum (nats)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def fit(
    model: Callable,
    guide: Callable,
    data: torch.Tensor | Sequence[torch.Tensor] | Dataset | DataLoader,
    *,
    elbo: ELBO | None = None,
    optim: PyroOptim | None = None,
    epochs: int = 10,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    seed: int = 0,
    val_data: torch.Tensor | Sequence[torch.Tensor] | Dataset | DataLoader | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    callbacks: Iterable[Callable[[int, dict], bool | None]] = (),
    clip_norm: float | None = None,
    jit: bool = False,
    distributed: bool | None = None,
    log: Callable[[str], None] = print,
) -> History:
    """Train ``guide`` against ``model`` by stochastic variational inference.

    :param data: a tensor (rows are data), a tuple of tensors with equal first dims, a
        ``Dataset`` of such tuples, or a ``DataLoader`` (then ``batch_size`` is its own).
    :param elbo: any Pyro ELBO; ``None`` routes the pair with :func:`pyro_reparam.route` and
        prints the plan once.
    :param optim: a Pyro optimizer (default ``pyro.optim.Adam({"lr": 1e-3})``).
    :param device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; batches are moved there, and so are
        ``nn.Module`` owners of bound-method models/guides (``vae.model``). Default: CPU.
    :param seed: seeds Pyro's RNGs and the epoch permutations; the same seed gives the same
        history, bit for bit, on CPU.
    :param checkpoint_dir: write ``checkpoint.pt`` there after each epoch and on Ctrl-C.
    :param resume: continue from ``checkpoint_dir/checkpoint.pt`` when it exists.
    :param callbacks: ``f(epoch, record)`` after each epoch; scalars they add to ``record``
        (say a KL term) are shown in the progress bar; returning ``True`` stops the run.
    :param clip_norm: clip the global gradient norm to this value.
    :param jit: use the TorchScript-compiled twin of the ELBO (``JitTrace_ELBO`` for
        ``Trace_ELBO``, likewise TraceMeanField, TraceGraph, TraceEnum); pays off for models with
        many small operations (see ``benchmarks/fit_overhead.py``).
    :param distributed: average gradients across ``torchrun`` ranks; ``None`` detects torchrun.
    :returns: the :class:`History`.
    :raises TrainingError: on a non-finite loss or gradient, naming the step, the sites with
        non-finite log-densities or parameters, and the last good checkpoint (kept).
    """
    callbacks = list(callbacks)
    _check_options(
        model, guide, elbo, optim, epochs, batch_size, checkpoint_dir, resume, callbacks, clip_norm
    )
    device = resolve_device(device)
    dist_ctx = _Distributed.detect(distributed, device)
    batches = _Batches(data, batch_size, seed, device, dist_ctx, "data")
    val = (
        _Batches(val_data, batch_size, seed, device, None, "val_data")
        if val_data is not None
        else None
    )
    if val is not None and val.arity != batches.arity:
        raise ValueError(
            f"fit: val_data has {val.arity} tensor(s) per row but data has {batches.arity}; "
            "give both the same structure"
        )
    for fn in (model, guide):
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, nn.Module):
            owner.to(device)
    is_main = dist_ctx is None or dist_ctx.rank == 0
    say = log if is_main else (lambda _msg: None)
    first = batches.first()
    history = History()
    if elbo is None:
        from pyro_reparam.routing import route

        history.plan = route(model, guide, *first)
        elbo = history.plan.elbo()
        say(str(history.plan))
    full_data = _loss_is_full_data(model, first)
    if jit:
        elbo = _jit(elbo)
    optim = optim or pyro.optim.Adam({"lr": 1e-3})
    path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    start_epoch, start_step, partial = 0, 0, 0.0
    pyro.set_rng_seed(seed)
    if resume and path is not None and path.exists():
        state = ckpt.load(path)
        _setup_params(model, guide, first)
        ckpt.restore_param_store(state["params"], path)
        optim.set_state(state["optim"])
        ckpt.set_rng_state(state["rng"])
        history.records = list(state["history"])
        start_epoch, start_step, partial = state["epoch"], state["step"], state["partial_loss"]
        history.checkpoint = path
        say(f"resumed from {path}: epoch {start_epoch}, step {start_step}")
    elif dist_ctx is not None:
        _setup_params(model, guide, first)
        pyro.set_rng_seed(seed + dist_ctx.rank)
    if dist_ctx is not None:
        dist_ctx.broadcast_params()

    def save(epoch, step, partial_loss):
        if path is None or not is_main:
            return
        ckpt.save(
            path,
            {
                "params": ckpt.param_store_state(),
                "optim": optim.get_state(),
                "rng": ckpt.rng_state(),
                "epoch": epoch,
                "step": step,
                "partial_loss": partial_loss,
                "history": history.records,
            },
        )
        history.checkpoint = path

    bar = _progress(progress and is_main, epochs, start_epoch, len(batches))
    epoch, step, total = start_epoch, start_step, partial
    try:
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            total = partial if epoch == start_epoch else 0.0
            skip = start_step if epoch == start_epoch else 0
            for step, batch in enumerate(batches.epoch(epoch, skip), start=skip):
                try:
                    loss, fault = _step(model, guide, elbo, optim, batch, clip_norm, dist_ctx)
                except ValueError as e:  # Pyro's validation of distribution parameters
                    if "invalid values" not in str(e) and "nan" not in str(e).lower():
                        raise
                    fault, error = "distribution parameter", e
                    _fail(model, guide, batch, epoch, step, fault, history.checkpoint, error)
                if fault:
                    _fail(model, guide, batch, epoch, step, fault, history.checkpoint)
                total += loss
                if bar is not None:
                    bar.update(1)
                    if step % 10 == 0:
                        per = batches.num_data if full_data else len(batch[0])
                        bar.set_postfix(epoch=epoch + 1, elbo=f"{-loss / per:.4g}", refresh=False)
            step = len(batches)
            total = dist_ctx.mean(total) if dist_ctx is not None else total
            record = {
                "epoch": epoch + 1,
                "train_elbo": -total / batches.num_data / (len(batches) if full_data else 1),
                "val_elbo": _evaluate(model, guide, elbo, val, full_data and batches.num_data),
                "seconds": time.perf_counter() - t0,
                "baselines": _baseline_state(),
            }
            history.records.append(record)
            save(epoch + 1, 0, 0.0)
            stop = any(cb(epoch + 1, record) for cb in callbacks)
            if bar is not None:
                added = {k: f"{v:.4g}" for k, v in record.items()
                         if k not in _RECORD_KEYS and isinstance(v, float)}  # fmt: skip
                bar.set_postfix(epoch=epoch + 1, elbo=f"{record['train_elbo']:.4g}", **added)
            if stop:
                history.stopped_early = True
                break
    except KeyboardInterrupt:
        if step < len(batches):
            save(epoch, step, total)
        say(f"\ninterrupted at epoch {epoch + 1}, step {step}; resume with resume=True ({path})")
        raise
    finally:
        if bar is not None:
            bar.close()
    return history


def _step(model, guide, elbo, optim, batch, clip_norm, dist_ctx) -> tuple[float, str | None]:
    """``SVI.step`` with a finiteness check (and the all-reduce when distributed).

    Returns the loss and ``None``, or the name of what was non-finite (``"loss"`` or
    ``"gradient"``), in which case the parameters are left unchanged.
    """
    with poutine.trace(param_only=True) as tape:
        loss = float(elbo.loss_and_grads(model, guide, *batch))
    params = {site["value"].unconstrained() for site in tape.trace.nodes.values()}
    grads = [p for p in params if p.grad is not None]
    if dist_ctx is not None:
        dist_ctx.average_grads(grads)
    fault = None
    if not math.isfinite(loss):
        fault = "loss"
    elif grads and not _finite_grads(grads, clip_norm):
        fault = "gradient"
    if fault is None:
        optim(params)
    zero_grads(params)
    return loss, fault


def _jit(elbo: ELBO) -> ELBO:
    from pyro import infer

    twins = {
        infer.Trace_ELBO: infer.JitTrace_ELBO,
        infer.TraceMeanField_ELBO: infer.JitTraceMeanField_ELBO,
        infer.TraceGraph_ELBO: infer.JitTraceGraph_ELBO,
        infer.TraceEnum_ELBO: infer.JitTraceEnum_ELBO,
    }
    twin = twins.get(type(elbo))
    if twin is None:
        raise ValueError(
            f"fit: jit=True compiles {', '.join(c.__name__ for c in twins)}; this run's ELBO is "
            f"{type(elbo).__name__}. Pass one of those as elbo=..., or jit=False"
        )
    return twin(
        num_particles=elbo.num_particles,
        max_plate_nesting=elbo.max_plate_nesting,
        vectorize_particles=elbo.vectorize_particles,
    )


def _finite_grads(params: list[torch.Tensor], clip_norm: float | None) -> bool:
    """Clip to ``clip_norm`` if given; True when every gradient entry is finite (one sync)."""
    if clip_norm is not None:
        return bool(torch.isfinite(torch.nn.utils.clip_grad_norm_(params, clip_norm)))
    return bool(torch.isfinite(torch.stack([p.grad.sum() for p in params]).sum()))


def _fail(model, guide, batch, epoch, step, what, last_checkpoint, error=None):
    suspects = _nonfinite_sites(model, guide, batch)
    where = f"epoch {epoch + 1}, step {step}"
    keep = f"; the last good checkpoint is {last_checkpoint}" if last_checkpoint else ""
    raise TrainingError(
        f"non-finite {what} at {where} ({suspects}){keep}. Lower the learning rate, set "
        "clip_norm=..., or check the model at these sites."
    ) from error


def _nonfinite_sites(model, guide, batch) -> str:
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


def _evaluate(model, guide, elbo, val, full_data_size: int | bool) -> float | None:
    """Validation ELBO per datum; ``full_data_size``: the training size when each batch's loss
    already estimates the ELBO of that many data (see :func:`_loss_is_full_data`)."""
    if val is None:
        return None
    total = 0.0
    for batch in val.epoch(0, 0, shuffle=False):
        total += float(elbo.loss(model, guide, *batch))
    if full_data_size:
        return -total / len(val) / full_data_size
    return -total / val.num_data


def _loss_is_full_data(model, batch) -> bool:
    """Whether one batch's loss already estimates the whole data set's ELBO: the model scales
    its observed sites up by ``N / B`` (``poutine.scale`` or a subsampled plate), as minibatched
    models with global latents do. Then the per-datum ELBO of an epoch is the mean batch loss
    over ``N``; otherwise (local latents, unscaled likelihood) it is the summed loss over
    ``N``.

    The model runs once on its own, latents drawn from its prior, with the random state put
    back afterwards, so that seeding and resuming are untouched; a model that cannot be run
    that way (say, an improper prior) counts as unscaled."""
    state = ckpt.rng_state()
    try:
        with torch.no_grad():
            model_trace = poutine.trace(model).get_trace(*batch)
    except (NotImplementedError, ValueError, RuntimeError):
        return False
    finally:
        ckpt.set_rng_state(state)
    return any(
        site["type"] == "sample" and site["is_observed"] and float(site["scale"]) > 1.0 + 1e-6
        for site in model_trace.nodes.values()
    )


def _baseline_state() -> dict[str, float]:
    store = pyro.get_param_store()
    return {
        name.removeprefix("_pyro_reparam.baseline."): store[name].mean().item()
        for name in store._params
        if name.startswith("_pyro_reparam.baseline.")
    }


def _setup_params(model, guide, batch) -> None:
    """Run guide and model once so every parameter exists (their values are overwritten)."""
    with torch.no_grad():
        guide_tr = poutine.trace(guide).get_trace(*batch)
        poutine.replay(model, trace=guide_tr)(*batch)


def _progress(enabled, epochs, start_epoch, steps_per_epoch):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=epochs * steps_per_epoch,
        initial=start_epoch * steps_per_epoch,
        unit="step",
        dynamic_ncols=True,
        desc="SVI",
    )


_RECORD_KEYS = ("epoch", "train_elbo", "val_elbo", "seconds", "baselines")
"""What :func:`fit` records itself; scalars that callbacks add are shown in the progress bar."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device`` (``None`` -> CPU), with an error that says what to pass."""
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"fit: device={device!r} is not a device; use 'cpu', 'cuda' or 'cuda:N'"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("fit: device='cuda' but no CUDA device is available; use device='cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"fit: device type {dev.type!r} is not supported; use 'cpu' or 'cuda'")
    return dev


def _check_options(
    model, guide, elbo, optim, epochs, batch_size, checkpoint_dir, resume, callbacks, clip_norm
):
    if not callable(model) or not callable(guide):
        raise TypeError("fit: model and guide must be callables (Pyro model and guide functions)")
    if elbo is not None and not isinstance(elbo, ELBO):
        raise TypeError(
            f"fit: elbo must be a pyro.infer.ELBO (e.g. Trace_ELBO()), got {type(elbo).__name__}"
        )
    if optim is not None and not isinstance(optim, PyroOptim):
        raise TypeError(
            "fit: optim must be a Pyro optimizer, e.g. pyro.optim.Adam({'lr': 1e-3}), not "
            f"{type(optim).__name__}"
        )
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"fit: {name} must be a positive integer, got {value!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("fit: resume=True needs checkpoint_dir=... (where the checkpoint is)")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"fit: clip_norm must be > 0 (or None), got {clip_norm!r}")
    for cb in callbacks:
        if not callable(cb):
            raise TypeError(f"fit: callbacks must be callables f(epoch, record), got {cb!r}")


class _Batches:
    """Shuffled minibatches of tensors or a Dataset, reproducible per (seed, epoch)."""

    def __init__(self, data, batch_size, seed, device, dist_ctx, arg):
        self.device, self.seed, self.dist = device, seed, dist_ctx
        self.loader = data if isinstance(data, DataLoader) else None
        self.tensors = None
        self.dataset = None
        if self.loader is not None:
            self.num_data = len(self.loader.dataset)
            self.batch_size = self.loader.batch_size or 1
            sample = next(iter(self.loader))
            self.arity = len(sample) if isinstance(sample, (tuple, list)) else 1
        elif isinstance(data, torch.Tensor) or (
            isinstance(data, (tuple, list))
            and data
            and all(isinstance(t, torch.Tensor) for t in data)
        ):
            tensors = (data,) if isinstance(data, torch.Tensor) else tuple(data)
            self.tensors = tuple(
                _checked_tensor(t, f"{arg}[{i}]", arg) for i, t in enumerate(tensors)
            )
            sizes = {t.shape[0] for t in self.tensors}
            if len(sizes) != 1:
                raise ValueError(
                    f"fit: the tensors in {arg} have different numbers of rows {sorted(sizes)}; "
                    "row i of each must belong to datum i"
                )
            self.num_data = sizes.pop()
            self.arity = len(self.tensors)
            self.tensors = tuple(t.to(device) for t in self.tensors)
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

    def epoch(self, epoch: int, skip: int, shuffle: bool = True):
        """The batches of ``epoch`` after the first ``skip``, each a tuple on the device."""
        if self.loader is not None:
            for i, batch in enumerate(self.loader):
                if i >= skip:
                    yield self._to_device(batch)
            return
        perm = self._permutation(epoch, shuffle)
        for start in range(skip * self.batch_size, self.num_data, self.batch_size):
            idx = perm[start : start + self.batch_size]
            if self.dist is not None:
                idx = idx[self.dist.rank :: self.dist.world]
            if self.tensors is not None:
                idx = idx.to(self.device)
                yield tuple(t[idx] for t in self.tensors)
            else:
                rows = [self.dataset[int(i)] for i in idx]
                rows = [r if isinstance(r, (tuple, list)) else (r,) for r in rows]
                yield self._to_device(tuple(torch.stack(col) for col in zip(*rows, strict=True)))

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


def _checked_tensor(t: torch.Tensor, name: str, arg: str) -> torch.Tensor:
    if t.dim() == 0:
        raise ValueError(f"fit: {name} is a scalar; {arg} needs one row per datum")
    if t.is_floating_point() and not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).reshape(t.shape[0], -1).any(1).nonzero()[:5].flatten().tolist()
        raise ValueError(
            f"fit: {name} contains NaN or inf (rows {bad}...); clean or drop those rows"
        )
    return t


class _Distributed:
    """Rank, world size and the collectives of a ``torchrun`` process group (gloo or nccl)."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    @classmethod
    def detect(cls, distributed: bool | None, device: torch.device) -> _Distributed | None:
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
