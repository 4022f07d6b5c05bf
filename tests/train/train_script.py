"""A small training run for the subprocess tests of ``pr.fit`` (SIGKILL/resume, seeding).

    python tests/train/train_script.py OUT_DIR [--resume] [--epochs E] [--slow]

Writes OUT_DIR/final0.pt with the param store's values, the ELBO's state and the history's
ELBOs.
"""

import argparse
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

import pyro_reparam as pr

N = 400


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 * torch.randn(N, generator=g)
    return x, y


def mixed_model(x, y):
    """A global binary switch and regression weights: a score-function and a pathwise site."""
    switch = pyro.sample("switch", dist.Bernoulli(0.5))
    w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]), poutine.scale(scale=N / x.shape[0]):
        pyro.sample("y", dist.Normal(x @ w + switch, 0.3), obs=y)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--slow", action="store_true", help="sleep per epoch so a kill lands mid-run")
    p.add_argument("--scramble", type=int, help="draw from the global RNG seeded so, first")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.scramble is not None:
        torch.manual_seed(args.scramble)
        torch.rand(args.scramble)
    model = mixed_model
    guide = pr.AutoReparamGuide(model)
    elbo = pr.ScoreFunctionELBO(num_particles=1, baseline="decaying")

    def report(epoch, record):
        print(f"epoch {epoch} done", flush=True)
        if args.slow:
            time.sleep(0.3)

    history = pr.fit(
        model,
        guide,
        data(),
        elbo=elbo,
        optim=pyro.optim.Adam({"lr": 0.01}),
        epochs=args.epochs,
        batch_size=10,
        seed=7,
        checkpoint_dir=args.out / "ckpt",
        resume=args.resume,
        progress=False,
        callbacks=[report],
        log=lambda msg: print(msg, file=sys.stderr),
    )
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
    elbo_state = {k: v.detach().clone() for k, v in elbo.state_dict().items()}
    torch.save(
        {"params": params, "elbo_state": elbo_state, "elbo": history.train_elbo},
        args.out / "final0.pt",
    )


if __name__ == "__main__":
    main()
