"""SNR of the encoder gradient against K for the IWAE bound: plain (``RenyiELBO(alpha=0)``) and
DReG (``DReG_ELBO``), on a small Gaussian VAE on digits.

Protocol: digits (8x8 in [0, 1]), encoder 64-64-(2 x 8), decoder 8-64-64, Bernoulli pixels. The
VAE is first trained with ``Trace_ELBO`` (Adam 1e-3, batch 128; 30 epochs, 3 quick) so that the
latents are used; at that fixed point, on a fixed batch of 64 training images, ``D`` gradient
draws (200, 20 quick) of each estimator for K in (1, 5, 20, 50). Per encoder parameter element
``SNR = |mean| / std`` over the draws (Rainforth et al. 2018); the table gives the median over
the encoder's elements and the relative variance ``tr Cov / |mean|^2`` of the whole encoder
gradient. The decoder's gradient is the same for both (DReG changes only the guide's).
"""

from __future__ import annotations

import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, RenyiELBO, Trace_ELBO
from torch import nn

from benchmarks.report import write
from pyro_reparam.apps.data import load_digits
from pyro_reparam.estimators import DReG_ELBO
from pyro_reparam.tables import format_table

LATENT, HIDDEN, KS = 8, 64, (1, 5, 20, 50)


class SmallVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, HIDDEN), nn.Softplus(), nn.Linear(HIDDEN, 16))
        self.decoder = nn.Sequential(
            nn.Linear(LATENT, HIDDEN), nn.Softplus(), nn.Linear(HIDDEN, 64)
        )

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            zeros = x.new_zeros(x.shape[0], LATENT)
            z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
            logits = self.decoder(z)
            pyro.sample("x", dist.Bernoulli(logits=logits, validate_args=False).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            h = self.encoder(x)
            pyro.sample("z", dist.Normal(h[:, :LATENT], torch.exp(0.5 * h[:, LATENT:])).to_event(1))


def _train(vae, images, epochs, seed):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    for _ in range(epochs):
        for idx in torch.randperm(len(images)).split(128):
            svi.step(images[idx])


def _encoder_draws(vae, elbo, batch, draws):
    params = list(vae.encoder.parameters())
    out = []
    for _ in range(draws):  # RenyiELBO has no differentiable_loss: read the .grad fields
        for p in vae.parameters():
            p.grad = None
        elbo.loss_and_grads(vae.model, vae.guide, batch)
        out.append(torch.cat([p.grad.reshape(-1) for p in params]))
    return torch.stack(out)


def run(out: Path, quick: bool = False, log=print) -> dict:
    torch.set_num_threads(1)
    images = torch.as_tensor(load_digits("train").images).reshape(-1, 64).float()
    epochs, draws = (3, 20) if quick else (30, 200)
    vae = SmallVAE()
    t = time.perf_counter()
    _train(vae, images, epochs, seed=0)
    batch = images[:64]
    results = {}
    for k in KS:
        for name, make in (
            (
                "IWAE (RenyiELBO alpha=0)",
                lambda k: (
                    RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True)
                    if k > 1
                    else Trace_ELBO()
                ),
            ),
            ("DReG_ELBO", lambda k: DReG_ELBO(num_particles=k)),
        ):
            pyro.set_rng_seed(k)
            g = _encoder_draws(vae, make(k), batch, draws)
            mean, std = g.mean(0), g.std(0)
            snr = (mean.abs() / std.clamp_min(1e-30)).median().item()
            rel = (g.var(0).sum() / mean.pow(2).sum()).item()
            results[f"{name}, K={k}"] = {
                "estimator": name,
                "K": k,
                "median_snr": snr,
                "relative_variance": rel,
            }
            log(f"  K={k:<3} {name:<26} median SNR {snr:.3f}  tr Cov/|mean|^2 {rel:.2f}")
    rows = [
        [r["estimator"], r["K"], f"{r['median_snr']:.3f}", f"{r['relative_variance']:.2f}"]
        for r in results.values()
    ]
    table = format_table(["estimator", "K", "median SNR (encoder)", "tr Cov / |mean|^2"], rows)
    summary = {
        "protocol": __doc__,
        "epochs": epochs,
        "draws": draws,
        "results": results,
        "seconds": time.perf_counter() - t,
    }
    write(
        out,
        "iwae_dreg_snr",
        summary,
        "Encoder-gradient SNR vs K: IWAE and DReG",
        f"{__doc__}\n\n```\n{table}\n```\n",
    )
    return summary
