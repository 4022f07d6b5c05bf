"""``fit(elbo=None)`` on a Gaussian VAE routes to the closed-form KL, and that is what it reaches.

Protocol: digits (8x8 intensities in [0, 1]), the VAE of Pyro's tutorial written as a user
writes it (:class:`TutorialVAE`: encoder 64-128-(2 x 8), decoder 8-128-64, softplus, Bernoulli
pixels with ``validate_args=False``), Adam(1e-3), batch 128, 100 epochs, seeds 0-2. Three fits
per seed on the same epoch permutations: ``pr.fit(vae.model, vae.guide, train)`` with
``elbo=None`` (the routed plan), with Pyro's ``Trace_ELBO()`` (Monte Carlo KL) and with
``TraceMeanField_ELBO()`` (closed-form KL, chosen by hand). Each is scored by one function: the
test ELBO per image with the KL in closed form and 100 samples of the likelihood term
(:func:`test_elbo`).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch import nn
from torch.distributions import kl_divergence

import pyro_reparam as pr
from benchmarks.report import write
from pyro_reparam.apps.data import load_digits
from pyro_reparam.tables import format_table

LATENT, HIDDEN, BATCH, EPOCHS, LR, SEEDS = 8, 128, 128, 100, 1e-3, (0, 1, 2)
ELBOS = {
    "fit(elbo=None): routed": None,
    "Trace_ELBO (Monte Carlo KL)": Trace_ELBO,
    "TraceMeanField_ELBO (closed-form KL)": TraceMeanField_ELBO,
}


class TutorialVAE(nn.Module):
    """Pyro's VAE tutorial at digits size: the model/guide pair a user brings to ``fit``."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, HIDDEN), nn.Softplus(), nn.Linear(HIDDEN, 16))
        self.decoder = nn.Sequential(
            nn.Linear(LATENT, HIDDEN), nn.Softplus(), nn.Linear(HIDDEN, 64), nn.Sigmoid()
        )

    def prior(self, x):
        zeros = x.new_zeros(x.shape[0], LATENT)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def posterior(self, x):
        h = self.encoder(x)
        return dist.Normal(h[:, :LATENT], torch.exp(0.5 * h[:, LATENT:])).to_event(1)

    def likelihood(self, z):
        return dist.Bernoulli(self.decoder(z), validate_args=False).to_event(1)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))
            pyro.sample("x", self.likelihood(z), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.posterior(x))


@torch.no_grad()
def test_elbo(vae: TutorialVAE, x: torch.Tensor, samples: int = 100) -> float:
    """``E_q[log p(x | z)] - KL(q(z | x) || p(z))`` per image, KL in closed form."""
    q = vae.posterior(x)
    log_lik = vae.likelihood(q.sample((samples,))).log_prob(x).mean(0)
    return (log_lik - kl_divergence(q, vae.prior(x))).mean().item()


def _fit(name, elbo_cls, train, seed, epochs):
    pyro.clear_param_store()
    torch.manual_seed(seed)
    vae = TutorialVAE()
    history = pr.fit(
        vae.model,
        vae.guide,
        train,
        elbo=None if elbo_cls is None else elbo_cls(),
        optim=pyro.optim.Adam({"lr": LR}),
        epochs=epochs,
        batch_size=BATCH,
        seed=seed,
        progress=False,
        log=lambda _m: None,
    )
    return vae, history


def run(out: Path, quick: bool = False, log=print) -> dict:
    torch.set_num_threads(1)
    train, test = load_digits("train").images, load_digits("test").images
    epochs, seeds = (5, (0,)) if quick else (EPOCHS, SEEDS)
    scores = {name: [] for name in ELBOS}
    plan_text, seconds = "", {name: 0.0 for name in ELBOS}
    for seed in seeds:
        for name, elbo_cls in ELBOS.items():  # interleaved: the same seed for each ELBO in turn
            t = time.perf_counter()
            vae, history = _fit(name, elbo_cls, train, seed, epochs)
            seconds[name] += time.perf_counter() - t
            torch.manual_seed(1000 + seed)
            scores[name].append(test_elbo(vae, test))
            if history.plan is not None:
                plan_text = str(history.plan)
            log(f"  seed {seed} {name:<38} test ELBO {scores[name][-1]:.3f}")

    def mean_se(v):
        se = statistics.stdev(v) / len(v) ** 0.5 if len(v) > 1 else float("nan")
        return statistics.mean(v), se

    rows = [
        [name, f"{mean_se(v)[0]:.3f} +- {mean_se(v)[1]:.3f}", f"{seconds[name] / len(seeds):.1f}"]
        for name, v in scores.items()
    ]
    text = format_table(["ELBO", f"test ELBO/image ({len(seeds)} seeds)", "s per fit"], rows)
    log(text)
    log(plan_text)
    summary = {
        "epochs": epochs,
        "seeds": list(seeds),
        "test_elbo": scores,
        "seconds_per_fit": {n: s / len(seeds) for n, s in seconds.items()},
        "plan": plan_text,
        "quick": quick,
    }
    write(
        out,
        "vae_route_kl",
        summary,
        f"fit(elbo=None) on the digits VAE: the routed ELBO ({epochs} epochs, CPU, 1 thread)",
        f"```\n{text}\n```\n\nThe plan fit printed:\n\n```\n{plan_text}\n```\n",
    )
    return summary
