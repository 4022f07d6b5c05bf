"""``fit``: one SVI loop for every model of the plugin and every user model/guide pair.

Each step is exactly Pyro's ``SVI.step`` (``elbo.loss_and_grads`` on the batch, then the
optimizer on the parameters the step touched, ordered by name), plus a finiteness check of the
loss and of the gradient norm (optionally clipped). Per epoch the history records the training
ELBO per datum, ``-(sum of step losses) / N`` (the usual convention: the model sums, unscaled,
over its batch), the validation ELBO per datum, the time, and the state of running-average
baselines. For a model that scales its minibatch up to the data set
(``pyro.plate("data", N, subsample=...)``), each batch loss is ``N`` times a per-datum value.

Batches: :mod:`~pyro_reparam.train.batches`; data parallel under ``torchrun`` (the reported
ELBO is the mean over ranks; rank 0 alone writes checkpoints and shows progress):
:mod:`~pyro_reparam.train.distributed`; checkpoints: :mod:`~pyro_reparam.train.checkpoint`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import ELBO
from pyro.infer.util import zero_grads
from pyro.optim import PyroOptim
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pyro_reparam.train import checkpoint as ckpt
from pyro_reparam.train.batches import Batches
from pyro_reparam.train.distributed import Distributed
from pyro_reparam.train.faults import fail, finite_grads, is_invalid_parameter_error
from pyro_reparam.train.history import RECORD_KEYS, History, baseline_state
from pyro_reparam.train.options import check_options, resolve_device

CHECKPOINT_NAME = "checkpoint.pt"

Data = torch.Tensor | Sequence[torch.Tensor] | Dataset | DataLoader


def fit(
    model: Callable,
    guide: Callable,
    data: Data,
    *,
    elbo: ELBO | None = None,
    optim: PyroOptim | None = None,
    epochs: int = 10,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    seed: int = 0,
    val_data: Data | None = None,
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
        prints the plan once. An ELBO with a ``state_dict()`` (baselines) is checkpointed
        through it.
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
    check_options(
        model, guide, elbo, optim, epochs, batch_size, checkpoint_dir, resume, callbacks, clip_norm
    )
    run = _Run.setup(
        model, guide, data, elbo=elbo, optim=optim, batch_size=batch_size, device=device,
        seed=seed, val_data=val_data, checkpoint_dir=checkpoint_dir, clip_norm=clip_norm,
        jit=jit, distributed=distributed, log=log,
    )  # fmt: skip
    start = run.start(resume)
    return run.train(start, epochs, callbacks, progress)


@dataclass
class _Run:
    """One :func:`fit` run: the pair, its ELBO and optimizer, the batches, the checkpoint."""

    model: Callable
    guide: Callable
    elbo: ELBO
    optim: PyroOptim
    batches: Batches
    val: Batches | None
    dist: Distributed | None
    path: Path | None
    clip_norm: float | None
    seed: int
    say: Callable[[str], None]
    history: History
    first: tuple
    full_data: bool
    at: tuple[int, int, float] = (0, 0, 0.0)
    """(epoch, step, summed loss so far): where a Ctrl-C checkpoint resumes."""

    @classmethod
    def setup(cls, model, guide, data, *, elbo, optim, batch_size, device, seed, val_data,
              checkpoint_dir, clip_norm, jit, distributed, log) -> _Run:  # fmt: skip
        device = resolve_device(device)
        dist = Distributed.detect(distributed, device)
        batches = Batches(data, batch_size, seed, device, dist, "data")
        val = None
        if val_data is not None:
            val = Batches(val_data, batch_size, seed, device, None, "val_data")
            if val.arity != batches.arity:
                raise ValueError(
                    f"fit: val_data has {val.arity} tensor(s) per row but data has "
                    f"{batches.arity}; give both the same structure"
                )
        for fn in (model, guide):
            owner = getattr(fn, "__self__", None)
            if isinstance(owner, nn.Module):
                owner.to(device)
        say = log if dist is None or dist.rank == 0 else (lambda _msg: None)
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
        path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
        return cls(
            model, guide, elbo, optim or pyro.optim.Adam({"lr": 1e-3}), batches, val, dist,
            path, clip_norm, seed, say, history, first, full_data,
        )  # fmt: skip

    @property
    def is_main(self) -> bool:
        return self.dist is None or self.dist.rank == 0

    def start(self, resume: bool) -> tuple[int, int, float]:
        """Seed, resume from the checkpoint if asked, and sync the ranks: (epoch, step, loss)."""
        pyro.set_rng_seed(self.seed)
        start = (0, 0, 0.0)
        if resume and self.path is not None and self.path.exists():
            start = self._resume()
        elif self.dist is not None:
            _setup_params(self.model, self.guide, self.first)
            pyro.set_rng_seed(self.seed + self.dist.rank)
        if self.dist is not None:
            self.dist.broadcast_params()
        return start

    def _resume(self) -> tuple[int, int, float]:
        state = ckpt.load(self.path)
        _setup_params(self.model, self.guide, self.first)
        ckpt.restore_param_store(state["params"], self.path)
        ckpt.restore_elbo_state(self.elbo, state["elbo"], self.path)
        self.optim.set_state(state["optim"])
        ckpt.set_rng_state(state["rng"])
        self.history.records = list(state["history"])
        self.history.checkpoint = self.path
        self.say(f"resumed from {self.path}: epoch {state['epoch']}, step {state['step']}")
        return state["epoch"], state["step"], state["partial_loss"]

    def save(self, epoch: int, step: int, partial_loss: float) -> None:
        if self.path is None or not self.is_main:
            return
        params, elbo_state = ckpt.snapshot(self.elbo)
        ckpt.save(
            self.path,
            {
                "params": params,
                "elbo": elbo_state,
                "optim": self.optim.get_state(),
                "rng": ckpt.rng_state(),
                "epoch": epoch,
                "step": step,
                "partial_loss": partial_loss,
                "history": self.history.records,
            },
        )
        self.history.checkpoint = self.path

    def train(self, start, epochs: int, callbacks: list, progress: bool) -> History:
        start_epoch, start_step, partial = start
        bar = _progress(progress and self.is_main, epochs, start_epoch, len(self.batches))
        self.at = start
        try:
            for epoch in range(start_epoch, epochs):
                resumed = epoch == start_epoch
                record = self._epoch(
                    epoch, start_step if resumed else 0, partial if resumed else 0.0, bar
                )
                self.history.records.append(record)
                self.save(epoch + 1, 0, 0.0)
                stop = any(cb(epoch + 1, record) for cb in callbacks)
                if bar is not None:
                    added = {k: f"{v:.4g}" for k, v in record.items()
                             if k not in RECORD_KEYS and isinstance(v, float)}  # fmt: skip
                    bar.set_postfix(epoch=epoch + 1, elbo=f"{record['train_elbo']:.4g}", **added)
                if stop:
                    self.history.stopped_early = True
                    break
        except KeyboardInterrupt:
            epoch, step, total = self.at
            if step < len(self.batches):
                self.save(epoch, step, total)
            self.say(
                f"\ninterrupted at epoch {epoch + 1}, step {step}; resume with resume=True "
                f"({self.path})"
            )
            raise
        finally:
            if bar is not None:
                bar.close()
        return self.history

    def _epoch(self, epoch: int, skip: int, total: float, bar) -> dict:
        """Train one epoch from step ``skip`` on (``total``: the loss of the steps before)."""
        t0 = time.perf_counter()
        for step, batch in enumerate(self.batches.epoch(epoch, skip), start=skip):
            self.at = (epoch, step, total)
            loss = self._step(epoch, step, batch)
            total += loss
            if bar is not None:
                bar.update(1)
                if step % 10 == 0:
                    per = self.batches.num_data if self.full_data else len(batch[0])
                    bar.set_postfix(epoch=epoch + 1, elbo=f"{-loss / per:.4g}", refresh=False)
        self.at = (epoch, len(self.batches), total)
        if self.dist is not None:
            total = self.dist.mean(total)
        n = self.batches.num_data
        return {
            "epoch": epoch + 1,
            "train_elbo": -total / n / (len(self.batches) if self.full_data else 1),
            "val_elbo": _evaluate(
                self.model, self.guide, self.elbo, self.val, self.full_data and n
            ),
            "seconds": time.perf_counter() - t0,
            "baselines": baseline_state(self.elbo),
        }

    def _step(self, epoch: int, step: int, batch: tuple) -> float:
        checkpoint = self.history.checkpoint
        try:
            loss, fault = _svi_step(
                self.model, self.guide, self.elbo, self.optim, batch, self.clip_norm, self.dist
            )
        except ValueError as e:  # Pyro's validation of distribution parameters
            if not is_invalid_parameter_error(e):
                raise
            fail(self.model, self.guide, batch, epoch, step, "distribution parameter",
                 checkpoint, e)  # fmt: skip
        if fault:
            fail(self.model, self.guide, batch, epoch, step, fault, checkpoint)
        return loss


def _svi_step(model, guide, elbo, optim, batch, clip_norm, dist) -> tuple[float, str | None]:
    """``SVI.step`` with a finiteness check (and the all-reduce when distributed).

    Returns the loss and ``None``, or the name of what was non-finite (``"loss"`` or
    ``"gradient"``), in which case the parameters are left unchanged.
    """
    with poutine.trace(param_only=True) as tape:
        loss = float(elbo.loss_and_grads(model, guide, *batch))
    params = _params_by_name(tape.trace)
    grads = [p for p in params if p.grad is not None]
    if dist is not None:
        dist.average_grads(grads)
    fault = None
    if not math.isfinite(loss):
        fault = "loss"
    elif grads and not finite_grads(grads, clip_norm):
        fault = "gradient"
    if fault is None:
        optim(params)
    zero_grads(params)
    return loss, fault


def _params_by_name(trace) -> list[torch.Tensor]:
    """The unconstrained parameters of a param trace, each once, in the order of their names."""
    params: dict[int, torch.Tensor] = {}
    for name in sorted(trace.nodes):
        p = trace.nodes[name]["value"].unconstrained()
        params.setdefault(id(p), p)
    return list(params.values())


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
