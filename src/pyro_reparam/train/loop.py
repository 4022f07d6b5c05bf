"""``fit``: one SVI loop for every model of the plugin and every user model/guide pair.

Each step is Pyro's ``SVI.step`` with checks (:mod:`~pyro_reparam.train.step`). Per epoch the
history records the training ELBO per datum, ``-(sum of step losses) / N`` (the usual
convention: the model sums, unscaled, over its batch), the validation ELBO per datum, the
time, and the state of running-average baselines; for a model that scales its minibatch up to
the data set (``pyro.plate("data", N, subsample=...)``), each batch loss is ``N`` times a
per-datum value (:mod:`~pyro_reparam.train.probe`).

At the end of an epoch: callbacks, then the learning-rate schedule, then the checkpoint, so
that what callbacks draw or change is in it and a resumed run is the uninterrupted one. Ctrl-C
stops after the step it lands in and checkpoints there (:mod:`~pyro_reparam.train.interrupt`).
A checkpoint is never written with non-finite values (:mod:`~pyro_reparam.train.state`), is
hashed and written atomically (:mod:`~pyro_reparam.train.checkpoint`), and its folder belongs
to one run at a time (:mod:`~pyro_reparam.train.lock`). Batches:
:mod:`~pyro_reparam.train.batches`; data parallel under torchrun:
:mod:`~pyro_reparam.train.distributed`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from pyro.infer import ELBO
from pyro.optim import PyroOptim
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pyro_reparam.train import checkpoint as ckpt
from pyro_reparam.train import resume as rs
from pyro_reparam.train import state as st
from pyro_reparam.train.batches import Batches
from pyro_reparam.train.distributed import Distributed, together
from pyro_reparam.train.faults import TrainingError, error_kind, fail, kept, where
from pyro_reparam.train.fused import FusedStep
from pyro_reparam.train.history import History, baseline_state
from pyro_reparam.train.interrupt import Interrupt
from pyro_reparam.train.lock import FolderLock
from pyro_reparam.train.optimizers import check_learning_rates, optim_kind, step_scheduler
from pyro_reparam.train.options import check_options, resolve_device
from pyro_reparam.train.probe import create_params, probe
from pyro_reparam.train.progress import evaluate, progress_bar, show
from pyro_reparam.train.rng import rng_state
from pyro_reparam.train.step import Step, jit_twin, svi_step

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
    scheduler_step: str = "epoch",
    log: Callable[[str], None] = print,
) -> History:
    """Train ``guide`` against ``model`` by stochastic variational inference.

    :param data: a tensor (rows are data), a tuple of tensors with equal first dims, a
        ``Dataset`` of such tuples, or a ``DataLoader`` (then ``batch_size`` is its own).
    :param elbo: any Pyro ELBO; ``None`` routes the pair with :func:`pyro_reparam.route` and
        prints the plan once. An ELBO with a ``state_dict()`` (baselines) is checkpointed
        through it.
    :param optim: a Pyro optimizer (default ``pyro.optim.Adam({"lr": 1e-3})``) or LR scheduler
        (``pyro.optim.ExponentialLR({...})``); learning rates outside ``[0, 10]`` are refused.
    :param device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; batches are moved there, and so are
        ``nn.Module`` owners of bound-method models/guides (``vae.model``). Default: CPU.
    :param seed: seeds Pyro's RNGs before anything is traced (so parameter initialization too)
        and the epoch permutations; the same seed gives the same history, bit for bit, on CPU,
        whatever the caller drew before.
    :param checkpoint_dir: write ``checkpoint.pt`` there after each epoch and on Ctrl-C; the
        folder is locked for the run (a second run on it fails at once).
    :param resume: continue from ``checkpoint_dir/checkpoint.pt`` when it exists, exactly; a
        call whose data size, batch size, seed, ranks or optimizer do not fit it is refused, a
        changed learning rate applied and said, ``epochs`` below its epochs refused.
    :param callbacks: ``f(epoch, record)`` after each epoch, before the checkpoint; scalars they
        add to ``record`` (say a KL term) are shown in the progress bar and saved; returning
        ``True`` stops the run (a resume of it then stops too).
    :param clip_norm: clip the global gradient norm to this value.
    :param jit: use the TorchScript-compiled twin of the ELBO (``JitTrace_ELBO`` for
        ``Trace_ELBO``, likewise TraceMeanField, TraceGraph, TraceEnum); pays off for models with
        many small operations (see ``benchmarks/fit_overhead.py``).
    :param distributed: data parallel across ``torchrun`` ranks; ``None`` detects torchrun.
    :param scheduler_step: when ``fit`` steps an LR scheduler: ``"epoch"``, ``"step"`` or
        ``"manual"`` (your callback does; see :mod:`~pyro_reparam.train.optimizers`).
    :returns: the :class:`History`.
    :raises TrainingError: on a non-finite loss, gradient or parameter, or data outside a
        likelihood's support, naming the step, the sites or parameters, and the last good
        checkpoint (kept).
    """
    callbacks = check_options(model, guide, elbo, optim, epochs, batch_size, seed,
                              checkpoint_dir, resume, progress, callbacks, clip_norm, jit,
                              distributed, log, scheduler_step)  # fmt: skip
    dist, device = Distributed.detect(distributed, resolve_device(device))
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    with contextlib.ExitStack() as stack:

        def prepare() -> tuple[_Run, dict | None]:
            state = _claim(folder, resume, stack) if dist is None or dist.rank == 0 else None
            pyro.set_rng_seed(seed)  # before anything that may initialize parameters
            run = _Run.setup(model, guide, data, elbo=elbo, optim=optim, batch_size=batch_size,
                             device=device, seed=seed, val_data=val_data, folder=folder,
                             clip_norm=clip_norm, jit=jit, dist=dist, log=log,
                             scheduler_step=scheduler_step)  # fmt: skip
            return run, state

        run, state = together(dist, prepare)
        if dist is not None:  # rank 0 read it: other hosts need no shared disk
            state = dist.broadcast(state)
        start = run.start(state, resume, epochs)
        return run.train(start, epochs, callbacks, progress)


def _claim(folder: Path | None, resume: bool, stack: contextlib.ExitStack) -> dict | None:
    """Create and lock the checkpoint folder for the run; its checkpoint if resuming."""
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"fit: checkpoint_dir={str(folder)!r}: {e.strerror}") from e
    stack.enter_context(FolderLock(folder))
    path = folder / CHECKPOINT_NAME
    return ckpt.load(path) if resume and path.exists() else None


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
    scheduler_step: str
    say: Callable[[str], None]
    history: History
    first: tuple
    full_data: bool
    names: set[str] = field(default_factory=set)
    """The parameters of this run (never stale ones of earlier fits)."""
    restored_optim: dict = field(default_factory=dict)
    zeroed: set[str] = field(default_factory=set)
    """The parameters whose gradient ``SVI.step`` would hold as zeros (see ``svi_step``)."""
    interrupt: Interrupt | None = None
    stop_agreed: bool = False
    """Whether the ranks agreed on a Ctrl-C at the last step (data parallel)."""
    interrupt_saved: bool = False
    stepper: FusedStep | None = None
    """``optim`` stepping all of a step's parameters in one call (:mod:`~.fused`)."""

    def __post_init__(self) -> None:
        self.stepper = FusedStep(self.optim)

    @classmethod
    def setup(cls, model, guide, data, *, elbo, optim, batch_size, device, seed, val_data,
              folder, clip_norm, jit, dist, log, scheduler_step) -> _Run:  # fmt: skip
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
        facts = probe(model, first)
        checked = [("data", facts)] + ([("val_data", probe(model, val.first()))] if val else [])
        for arg, seen in checked:
            if seen.violations:
                raise ValueError(
                    f"fit: {arg}: {seen.violations[0]}; transform the data, or use a "
                    "likelihood whose support covers them"
                )
        history = History()
        if elbo is None:
            from pyro_reparam.routing import route

            history.plan = route(model, guide, *first)
            elbo = history.plan.elbo(direct=not jit)  # the direct ELBOs have no JIT twin
            say(str(history.plan))
        if jit:
            elbo = jit_twin(elbo, say)
        path = folder / CHECKPOINT_NAME if folder is not None else None
        return cls(
            model, guide, elbo, optim or pyro.optim.Adam({"lr": 1e-3}), batches, val, dist,
            path, clip_norm, seed, scheduler_step, say, history, first, facts.full_data,
        )  # fmt: skip

    @property
    def is_main(self) -> bool:
        return self.dist is None or self.dist.rank == 0

    @property
    def rank(self) -> int:
        return 0 if self.dist is None else self.dist.rank

    def start(self, state: dict | None, resume: bool, epochs: int) -> rs.Position:
        """Create the parameters, then resume from the checkpoint ``state`` if there is one
        (else reseed: the training stream starts at ``seed`` whatever setup drew); sync the
        ranks."""
        self.names = create_params(self.model, self.guide, self.first)
        check_learning_rates(self.optim, sorted(self.names))
        if state is None:
            pyro.set_rng_seed(self.seed)
            if resume:
                self.say(f"resume: no checkpoint at {self.path} yet; starting afresh")
            start = rs.Position()
        else:
            start = self._resume(state, epochs)
        if self.dist is not None:
            self.dist.broadcast_params(sorted(self.names))
        return start

    def _run_facts(self) -> dict[str, int]:
        world = 1 if self.dist is None else self.dist.world
        return {"seed": self.seed, "num_data": self.batches.num_data,
                "batch_size": self.batches.batch_size, "world": world}  # fmt: skip

    def _resume(self, state: dict, epochs: int) -> rs.Position:
        st.check_layout(state, self.path)
        rs.check_fits(state, self._run_facts(), epochs, self.path)
        self.restored_optim = rs.restore(state, self.rank, self.elbo, self.optim, self.path,
                                         self.say)  # fmt: skip
        self.names |= set(state["params"])
        self.zeroed = set(state.get("zero_grads", []))
        self.history.records = list(state["history"])
        self.history.checkpoint = self.path
        self.history.stopped_early = state["stopped_early"]
        self.say(f"resumed from {self.path}: epoch {state['epoch']}, step {state['step']}")
        return rs.position(state, self.rank)

    def save(self, epoch: int, step: int, total: float, epoch_rng=None) -> None:
        """Write the checkpoint (rank 0, with every rank's RNG and ELBO state), or raise
        TrainingError without writing when anything in it is non-finite."""
        if self.path is None:
            return
        mine = {"rng": rng_state(), "epoch_rng": epoch_rng, "elbo": st.elbo_state(self.elbo)}
        ranks = [mine] if self.dist is None else self.dist.gather(mine)
        state, problem = None, None
        at = where(epoch, step) if step else f"the end of epoch {epoch}"
        if self.is_main:
            try:
                state = self._state(ranks, epoch, step, total)
            except TypeError as e:  # a callback's value a checkpoint cannot hold
                problem = e
            bad = st.nonfinite_parts(state) if state is not None else []
            if bad:
                problem = TrainingError(
                    f"not writing the checkpoint at {at}: {', '.join(bad[:4])} "
                    f"{'is' if len(bad) == 1 else 'are'} non-finite{kept(self.history.checkpoint)}"
                    ". Lower the learning rate or set clip_norm=..."
                )
        if self.dist is not None:
            problem = self.dist.broadcast(problem)
        if problem is not None:
            raise problem
        if self.is_main:
            ckpt.save(self.path, state)
            self.history.checkpoint = self.path

    def _state(self, ranks: list, epoch: int, step: int, total: float) -> dict:
        return {
            "params": st.run_params(self.elbo, self.names),
            "optim": {**self.restored_optim, **self.optim.get_state()},
            "optim_kind": optim_kind(self.optim),
            "ranks": ranks,
            "epoch": epoch,
            "step": step,
            "partial_loss": float(total),
            "history": st.plain_records(self.history.records),
            "stopped_early": self.history.stopped_early,
            "run": self._run_facts(),
            "zero_grads": sorted(self.zeroed),
        }

    def train(self, start: rs.Position, epochs: int, callbacks: list, progress: bool) -> History:
        if self.history.stopped_early:
            self.say(f"{self.path}: this run was stopped early by a callback; nothing to train")
            return self.history
        steps = len(self.batches)
        bar = progress_bar(
            progress and self.is_main, epochs, start.epoch * steps + start.step, steps
        )
        try:
            with Interrupt() as self.interrupt:
                for epoch in range(start.epoch, epochs):
                    record = self._epoch(epoch, start if epoch == start.epoch else None, bar)
                    self.history.records.append(record)
                    stop = any([bool(cb(epoch + 1, record)) for cb in callbacks])
                    loss = -(record["val_elbo"] if record["val_elbo"] is not None
                             else record["train_elbo"])  # fmt: skip
                    step_scheduler(self.optim, "epoch", self.scheduler_step, loss)
                    self.history.stopped_early = stop
                    self.save(epoch + 1, 0, 0.0)
                    show(bar, record)
                    agreed = self.stop_agreed if self.dist else self.interrupt.requested
                    self._stop_if_interrupted(epoch + 1, 0, agreed)
                    if stop:
                        break
        except KeyboardInterrupt:
            if not self.interrupt_saved:
                self.say(f"\ninterrupted; the last checkpoint ({self.history.checkpoint}) is kept")
            raise
        finally:
            if bar is not None:
                bar.close()
        return self.history

    def _stop_if_interrupted(self, epoch: int, step: int, agreed: bool) -> None:
        """Raise KeyboardInterrupt after a Ctrl-C, the checkpoint just written (in
        ``(epoch, step)`` terms: the next step to run)."""
        if not agreed:
            return
        self.interrupt_saved = True
        at = f"epoch {epoch + 1}, step {step}" if step else f"the end of epoch {epoch}"
        by = f" by {self.interrupt.signal_name}" if self.interrupt.signal_name else ""
        self.say(f"\ninterrupted{by}; checkpoint {self.path} resumes at {at} with resume=True")
        raise KeyboardInterrupt

    def _epoch(self, epoch: int, start: rs.Position | None, bar) -> dict:
        """Train one epoch (from ``start``'s step, with its summed loss, when resuming)."""
        t0 = time.perf_counter()
        skip, total = (start.step, start.total) if start is not None else (0, 0.0)
        epoch_rng = start.epoch_rng if start is not None and start.step else rng_state()
        last = len(self.batches) - 1
        for step, batch in enumerate(self.batches.epoch(epoch, skip, epoch_rng=epoch_rng),
                                     start=skip):  # fmt: skip
            result = self._step(epoch, step, batch)
            total += result.loss
            step_scheduler(self.optim, "step", self.scheduler_step, result.loss)
            if bar is not None:
                bar.update(1)
                if step % 10 == 0:
                    per = self.batches.num_data if self.full_data else self.batches.batch_size
                    bar.set_postfix(epoch=epoch + 1, elbo=f"{-result.loss / per:.4g}",
                                    refresh=False)  # fmt: skip
            self.stop_agreed = result.interrupted
            agreed = result.interrupted if self.dist is not None else self.interrupt.requested
            if agreed and step < last:
                self.save(epoch, step + 1, total, epoch_rng)
                self._stop_if_interrupted(epoch, step + 1, agreed)
        n = self.batches.num_data
        val = evaluate(self.model, self.guide, self.elbo, self.val, self.full_data and n, epoch)
        return {
            "epoch": epoch + 1,
            "train_elbo": -total / n / (len(self.batches) if self.full_data else 1),
            "val_elbo": val,
            "seconds": time.perf_counter() - t0,
            "baselines": self._baselines(),
        }

    def _baselines(self) -> dict[str, float]:
        values = baseline_state(self.elbo)
        return values if self.dist is None else self.dist.reduce(values, average=True)

    def _step(self, epoch: int, step: int, batch: tuple) -> Step:
        names, last_good = sorted(self.names), self.history.checkpoint
        args = (self.model, self.guide, batch, epoch, step)
        try:
            result = svi_step(self.elbo, self.stepper, self.model, self.guide, batch,
                              self.clip_norm, self.dist, self.full_data,
                              lambda: self.interrupt.requested, self.zeroed)  # fmt: skip
        except ValueError as e:  # Pyro's validation of distribution parameters and values
            kind = error_kind(e)
            if kind is None:
                raise
            fail(names, *args, kind, last_good, e)
        self.names.update(result.names)
        if result.fault is not None:
            fail(sorted(self.names), *args, result.fault, last_good, bad=result.bad)
        return result
