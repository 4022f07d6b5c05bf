"""Train the sigmoid belief net (DiscreteVAE, 64 Bernoulli latents) on the digits with DisARM
(2 antithetic pairs, 4 model evaluations per step) and DisARM with the midpoint Taylor control
variate (1 pair, 3 evaluations per step) against the routed leave-one-out (4 particles, 4
evaluations): the same seeds, the same epochs and steps, minibatches of 100, Adam 1e-3. The
Taylor variant thus gets fewer evaluations than the others, never more.

Figure: the test-set ELBO per image (binarized digits' test split), each image's
``E_q[log p(x, z) - log q(z | x)]`` estimated with ``TEST_SAMPLES`` draws, averaged over the
seeds, with the per-seed values and the paired differences (estimator - LOO, per seed).
``sbn_variance`` measures the encoder-gradient variance of the same estimators.
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
from pyro_reparam.estimators import DisARM_ELBO, TaylorDisARM_ELBO
from pyro_reparam.models import DiscreteVAE
from pyro_reparam.tables import format_table

BATCH = 100
EPOCHS = 60
SEEDS = (0, 1, 2)
TEST_SAMPLES = 200


@torch.no_grad()
def test_elbo(vae: DiscreteVAE, x: torch.Tensor) -> float:
    q, p = vae.posterior(x), vae.prior(x.shape[0])
    z = q.sample((TEST_SAMPLES,))
    f = vae.likelihood_given(z).log_prob(x) + p.log_prob(z) - q.log_prob(z)
    return f.mean().item()


def _elbo(name: str, vae: DiscreteVAE, x: torch.Tensor):
    if name == "DisARM (2 pairs)":
        return DisARM_ELBO(num_pairs=2)
    if name == "Taylor DisARM (1 pair)":
        return TaylorDisARM_ELBO(num_pairs=1)
    return pr.route(vae.model, vae.guide, x[:BATCH]).elbo()  # leave-one-out over 4


def run(out: Path, quick: bool = False, log=print) -> dict:
    torch.set_num_threads(1)
    train_x = load_digits("train").binarized().images
    test_x = load_digits("test").binarized().images
    epochs, seeds = (3, SEEDS[:1]) if quick else (EPOCHS, SEEDS)
    names = ("routed default: LOO (K=4)", "DisARM (2 pairs)", "Taylor DisARM (1 pair)")
    results: dict[str, list[float]] = {n: [] for n in names}
    seconds: dict[str, float] = {n: 0.0 for n in names}
    for seed in seeds:
        for name in names:
            pyro.clear_param_store()
            pyro.set_rng_seed(seed)
            vae = DiscreteVAE(64, num_latents=64, hidden=(200,))
            t = time.perf_counter()
            pr.fit(
                vae.model,
                vae.guide,
                train_x,
                elbo=_elbo(name, vae, train_x),
                epochs=epochs,
                batch_size=BATCH,
                seed=seed,
                progress=False,
                log=lambda _: None,
            )
            seconds[name] += time.perf_counter() - t
            results[name].append(test_elbo(vae, test_x))
            log(f"seed {seed} {name:<26} test ELBO/image {results[name][-1]:8.3f}")
    loo = results[names[0]]
    diffs = {n: [d - lo for d, lo in zip(results[n], loo, strict=True)] for n in names[1:]}
    evals = {names[0]: 4, names[1]: 4, names[2]: 3}
    rows = [
        [
            n,
            evals[n],
            f"{statistics.mean(v):.3f}",
            " ".join(f"{e:.3f}" for e in v),
            f"{seconds[n]:.0f}",
        ]
        for n, v in results.items()
    ]
    text = format_table(["estimator", "evals/step", "test ELBO/image", "per seed", "train s"], rows)
    better = {n: all(d > 0 for d in ds) for n, ds in diffs.items()}
    diff_text = "\n".join(
        f"{n} - LOO per seed: {', '.join(f'{d:+.3f}' for d in ds)} (better on every seed: "
        f"{better[n]})"
        for n, ds in diffs.items()
    )
    log(text)
    log(diff_text)
    summary = {
        "quick": quick,
        "epochs": epochs,
        "seeds": list(seeds),
        "test_elbo": results,
        "evaluations_per_step": evals,
        "minus_loo": diffs,
        "better_every_seed": better,
        "train_seconds": seconds,
    }
    write(
        out,
        "sbn_train",
        summary,
        "Training the sigmoid belief net: DisARM and Taylor DisARM vs leave-one-out",
        f"{epochs} epochs, minibatches of {BATCH}, Adam 1e-3, seeds {list(seeds)}; test ELBO per "
        f"image with {TEST_SAMPLES} draws of q per image.\n\n```\n{text}\n```\n\n"
        f"{diff_text}\n",
    )
    return summary
