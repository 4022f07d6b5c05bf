"""Training the IWAE bound with DReG vs the plain IWAE gradient (issue 18): test log-likelihood.

Protocol: the embedded digits (8x8 in [0, 1]; the fixed train/test split), ``VAE(64, 8,
hidden=(128,))`` with Continuous Bernoulli pixels, ``iwae_particles=5``, trained by
``pyro_reparam.train.fit`` with the VAE's own (fast) ELBO, ``iwae_gradient="plain"`` (Pyro's
``RenyiELBO(alpha=0)`` gradient) or ``"dreg"`` (doubly reparameterized encoder gradient, Tucker
et al. 2019; the decoder's gradient is the same), Adam(1e-3), batch 64, ``EPOCHS`` epochs, for
each seed in ``SEEDS`` the same initialization, permutations and noise stream for both. Score:
the importance-sampled ``log p(x)`` per test image (``VAE.log_likelihood``, ``K_EVAL`` draws,
one fixed scoring seed). Acceptance (issue 18): DReG >= plain IWAE, on the mean over seeds.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pyro
import torch

import pyro_reparam as pr
from benchmarks.report import write
from pyro_reparam.apps.data import load_digits
from pyro_reparam.models import VAE
from pyro_reparam.tables import format_table

LATENT, HIDDEN, K, BATCH, LR, K_EVAL = 8, 128, 5, 64, 1e-3, 1000
EPOCHS, SEEDS = 100, (0, 1, 2)
GRADIENTS = ("plain", "dreg")


def train_and_score(gradient: str, seed: int, epochs: int, train, test) -> tuple[float, float]:
    """``(test log p(x) per image, training seconds)`` of one run."""
    pyro.clear_param_store()
    torch.manual_seed(seed)
    vae = VAE(64, LATENT, hidden=(HIDDEN,), iwae_particles=K, iwae_gradient=gradient)
    t = time.perf_counter()
    pr.fit(vae.model, vae.guide, train, elbo=vae.elbo(), optim=pyro.optim.Adam({"lr": LR}),
           epochs=epochs, batch_size=BATCH, seed=seed, progress=False)  # fmt: skip
    seconds = time.perf_counter() - t
    torch.manual_seed(1234)
    return vae.log_likelihood(test, num_samples=K_EVAL).mean().item(), seconds


def run(out: Path, quick: bool = False, log=print) -> dict:
    torch.set_num_threads(1)
    train, test = load_digits("train").images, load_digits("test").images
    epochs, seeds = (2, SEEDS[:1]) if quick else (EPOCHS, SEEDS)
    scores = {g: [] for g in GRADIENTS}
    seconds = {g: 0.0 for g in GRADIENTS}
    for seed in seeds:
        for g in GRADIENTS:
            ll, s = train_and_score(g, seed, epochs, train, test)
            scores[g].append(ll)
            seconds[g] += s
            log(f"seed {seed} {g:5s}: test log p(x) {ll:.3f} ({s:.0f} s)")
    mean = {g: statistics.fmean(v) for g, v in scores.items()}
    rows = [[f"iwae_gradient={g!r}", *(f"{v:.3f}" for v in scores[g]), f"{mean[g]:.3f}",
             f"{seconds[g]:.0f}"] for g in GRADIENTS]  # fmt: skip
    heads = ["VAE, K=5", *(f"seed {s}" for s in seeds), "mean", "train s (all seeds)"]
    text = format_table(heads, rows)
    gain = mean["dreg"] - mean["plain"]
    wins = sum(d >= p for d, p in zip(scores["dreg"], scores["plain"], strict=True))
    verdict = (f"DReG minus plain IWAE: {gain:+.3f} nats/image on the mean; DReG >= plain on "
               f"{wins} of {len(seeds)} seeds; acceptance (DReG >= plain, mean): "
               f"{'met' if gain >= 0 else 'NOT met'}")  # fmt: skip
    log(f"{text}\n{verdict}")
    summary = {"epochs": epochs, "seeds": list(seeds), "k": K, "k_eval": K_EVAL,
               "latent_dim": LATENT, "hidden": HIDDEN, "batch_size": BATCH, "lr": LR,
               "test_log_likelihood": scores, "mean": mean, "dreg_minus_plain": gain,
               "seconds": seconds, "accepted": gain >= 0, "quick": quick}  # fmt: skip
    write(out, "vae_iwae_dreg", summary,
          f"IWAE-{K} VAE on digits: DReG vs plain IWAE gradient ({epochs} epochs, CPU, 1 thread)",
          f"Test log p(x) per image, importance sampled with {K_EVAL} draws (higher is "
          f"better).\n\n```\n{text}\n```\n\n{verdict}\n")  # fmt: skip
    return summary
