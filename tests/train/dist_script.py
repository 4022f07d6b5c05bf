"""Training runs for the data-parallel tests of ``pr.fit`` (see test_distributed.py).

    torchrun --nproc-per-node=2 tests/train/dist_script.py OUT_DIR

runs every job of :data:`JOBS` in one launch and writes ``OUT_DIR/<job>_rank<r>.pt`` with the
param store's values, the history's ELBOs and baselines, and the final torch RNG state. The
models are imported by the tests to run the same jobs in one process.
"""

import os
import signal
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch.distributions import constraints

import pyro_reparam as pr
from pyro_reparam.train.checkpoint import load

N, BATCH = 400, 40
ODD_N = 403  # the last batch has 3 rows: 2 on rank 0, 1 on rank 1
SIGTERM_STEP = 13  # epoch 2, step 3 of the 10 steps per epoch (each rank: 20 of 40 rows)


def data(n=N):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    w = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.0, -1.0]])
    return x, x @ w.T + 0.3 * torch.randn(n, 2, generator=g)


def six_model(x, y):
    """A global switch (score function), a weight matrix and a bias, scaled to the data set."""
    switch = pyro.sample("switch", dist.Bernoulli(0.5))
    weights = pyro.sample("W", dist.Normal(torch.zeros(2, 3), 1.0).to_event(2))
    bias = pyro.sample("b", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    log_noise = pyro.param("log_noise", torch.zeros(1, 2))
    with pyro.plate("data", x.shape[0]), poutine.scale(scale=N / x.shape[0]):
        loc = x @ weights.T + bias + 0.5 * switch
        pyro.sample("y", dist.Normal(loc, log_noise.exp()).to_event(1), obs=y)


def six_guide(x, y):
    """Six parameters of six shapes: (), (2, 3), (2, 3), (2,), (2,), and the model's (1, 2)."""
    logit = pyro.param("switch_logit", torch.tensor(0.0))
    pyro.sample("switch", dist.Bernoulli(logits=logit))
    w_loc = pyro.param("W_loc", torch.zeros(2, 3))
    w_scale = pyro.param("W_scale", torch.full((2, 3), 0.1), constraint=constraints.positive)
    pyro.sample("W", dist.Normal(w_loc, w_scale).to_event(2))
    b_loc = pyro.param("b_loc", torch.zeros(2))
    b_scale = pyro.param("b_scale", torch.full((2,), 0.1), constraint=constraints.positive)
    pyro.sample("b", dist.Normal(b_loc, b_scale).to_event(1))


def mle_model(x, y):
    """Unscaled, no latents: each rank's loss is its part of the batch's sum."""
    weights = pyro.param("mle_W", torch.zeros(2, 3))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(x @ weights.T, 0.5).to_event(1), obs=y)


def mle_guide(x, y):
    pass


def local_model(x, y):
    """A latent per row: the ranks draw different amounts of noise on an odd split."""
    weights = pyro.param("local_W", torch.zeros(2, 3))
    with pyro.plate("data", x.shape[0]):
        u = pyro.sample("u", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
        pyro.sample("y", dist.Normal(x @ weights.T + u, 0.3).to_event(1), obs=y)


def local_guide(x, y):
    loc = pyro.param("u_loc", torch.zeros(2))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("u", dist.Normal(loc.expand(x.shape[0], 2), 0.5).to_event(1))


TASKS = {
    "six": (six_model, six_guide, lambda: pr.ScoreFunctionELBO(baseline="decaying"), N),
    "mle": (mle_model, mle_guide, pyro.infer.Trace_ELBO, N),
    "local": (local_model, local_guide, pyro.infer.Trace_ELBO, ODD_N),
}


def run(task, epochs, ckpt=None, resume=False, sigterm_at=None):
    """One fit of ``task`` from an empty param store; returns what the tests compare.
    ``sigterm_at``: rank 1 sends itself SIGTERM inside that training step (counted from 1), as
    torchrun's agent does to its workers on Ctrl-C; rank 0 gets no signal."""
    pyro.clear_param_store()
    model, guide, make_elbo, n = TASKS[task]
    if sigterm_at is not None:
        model = _signalled(model, sigterm_at)
    history = pr.fit(model, guide, data(n), elbo=make_elbo(),
                     optim=pyro.optim.Adam({"lr": 0.01}), epochs=epochs, batch_size=BATCH,
                     seed=7, checkpoint_dir=ckpt, resume=resume, progress=False,
                     log=lambda msg: print(msg, file=sys.stderr))  # fmt: skip
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
    baselines = [r["baselines"] for r in history.records]
    return {"params": params, "elbo": history.train_elbo, "baselines": baselines,
            "rng": torch.get_rng_state()}  # fmt: skip


JOBS = {
    "six_full": lambda out: run("six", 4),
    "six_resumed": lambda out: (run("six", 2, out / "six_ckpt"), _scramble(),
                                run("six", 4, out / "six_ckpt", resume=True))[-1],
    "mle": lambda out: run("mle", 2),
    "six_sigterm": lambda out: _stopped_and_resumed(out / "sigterm_ckpt"),
    "local_full": lambda out: run("local", 3),
    "local_resumed": lambda out: (run("local", 1, out / "local_ckpt"), _scramble(),
                                  run("local", 3, out / "local_ckpt", resume=True))[-1],
}  # fmt: skip


def _signalled(model, at):
    calls = {"n": 0}

    def signalled(x, y):
        if torch.is_grad_enabled():  # training steps, not setup
            calls["n"] += 1
            if calls["n"] == at and torch.distributed.get_rank() == 1:
                os.kill(os.getpid(), signal.SIGTERM)
        return model(x, y)

    return signalled


def _stopped_and_resumed(ckpt):
    """SIGTERM on one rank mid-epoch: both ranks stop after that step with KeyboardInterrupt;
    the checkpoint's position, then the resumed run's results."""
    try:
        run("six", 4, ckpt, sigterm_at=SIGTERM_STEP)
    except KeyboardInterrupt:
        stopped = True
    else:
        stopped = False
    torch.distributed.barrier()  # rank 0 writes the checkpoint; rank 1 stops without writing
    state = load(ckpt / "checkpoint.pt")
    _scramble()
    result = run("six", 4, ckpt, resume=True)
    return {**result, "stopped": stopped, "position": (state["epoch"], state["step"])}


def _scramble():
    """What a fresh process would have: another RNG state on every rank."""
    torch.manual_seed(1234 + torch.distributed.get_rank())


def main(out: Path):
    torch.set_num_threads(1)
    for name, job in JOBS.items():
        result = job(out)
        rank = torch.distributed.get_rank()
        torch.save(result, out / f"{name}_rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
