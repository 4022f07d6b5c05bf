"""The plugin's VAE against a hand-written PyTorch VAE of the same architecture, on digits.

Both: MLP 64-256-(2 x 8) encoder, 8-256-64 decoder, ReLU, Continuous Bernoulli likelihood,
Adam(1e-3), batch 64, the same epoch permutations, ``EPOCHS`` epochs, seed 0. The reference
writes its loss by hand (``-log p(x|z) + KL`` in closed form, one reparameterized sample);
the plugin trains ``VAE(kl="analytic")`` (TraceMeanField_ELBO) and ``VAE(kl="mc")``
(Trace_ELBO, Pyro's usual choice) through ``pr.fit``. All are scored by the same function:
the test ELBO with 100 samples per image and the importance-sampled log-likelihood (K = 500).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pyro
import torch
from torch import nn
from torch.distributions import ContinuousBernoulli, Normal, kl_divergence

import pyro_reparam as pr
from benchmarks.report import write
from pyro_reparam.apps.data import load_digits
from pyro_reparam.models import VAE
from pyro_reparam.tables import format_table

LATENT, HIDDEN, BATCH, EPOCHS, LR = 8, 256, 64, 200, 1e-3


class ReferenceVAE(nn.Module):
    """A VAE in plain PyTorch, the way the tutorials write it."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2 * LATENT)
        )
        self.decoder = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 64))

    def q(self, x):
        h = self.encoder(x)
        return Normal(h[..., :LATENT], nn.functional.softplus(h[..., LATENT:]) + 1e-4)

    def loss(self, x):
        q = self.q(x)
        z = q.rsample()
        nll = -ContinuousBernoulli(logits=self.decoder(z)).log_prob(x).sum(-1)
        kl = kl_divergence(q, Normal(0.0, 1.0)).sum(-1)
        return (nll + kl).sum()


def train_reference(x, seed, epochs):
    torch.manual_seed(seed)
    ref = ReferenceVAE()
    opt = torch.optim.Adam(ref.parameters(), lr=LR)
    for epoch in range(epochs):
        perm = torch.randperm(
            len(x), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        )
        for i in range(0, len(x), BATCH):
            loss = ref.loss(x[perm[i : i + BATCH]])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return ref


@torch.no_grad()
def score(encoder, decoder, x, samples=100, k=500):
    """Test ELBO (closed-form KL, 100-sample likelihood term) and IS log-likelihood, per image."""
    h = encoder(x)
    q = Normal(h[..., :LATENT], nn.functional.softplus(h[..., LATENT:]) + 1e-4)
    z = q.sample((samples,))
    ll = ContinuousBernoulli(logits=decoder(z)).log_prob(x).sum(-1).mean(0)
    elbo = ll - kl_divergence(q, Normal(0.0, 1.0)).sum(-1)
    z = q.sample((k,))
    log_w = (
        ContinuousBernoulli(logits=decoder(z)).log_prob(x).sum(-1)
        + Normal(0.0, 1.0).log_prob(z).sum(-1)
        - q.log_prob(z).sum(-1)
    )
    log_px = torch.logsumexp(log_w, 0) - math.log(k)
    return elbo.mean().item(), log_px.mean().item()


def run(out: Path, quick: bool = False, log=print) -> dict:
    torch.set_num_threads(1)
    train, test = load_digits("train").images, load_digits("test").images
    epochs = 10 if quick else EPOCHS
    results = {}
    t = time.perf_counter()
    torch.manual_seed(0)
    ref = train_reference(train, 0, epochs)
    results["hand-written PyTorch (analytic KL)"] = (
        *score(ref.encoder, ref.decoder, test),
        time.perf_counter() - t,
    )
    for kl in ("analytic", "mc"):
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = VAE(64, LATENT, hidden=(HIDDEN,), kl=kl)
        t = time.perf_counter()
        pr.fit(
            vae.model,
            vae.guide,
            train,
            elbo=vae.elbo(),
            optim=pyro.optim.Adam({"lr": LR}),
            epochs=epochs,
            batch_size=BATCH,
            seed=0,
            progress=False,
        )
        name = f"pyro_reparam VAE, kl={kl!r}"
        results[name] = (*score(vae.encoder, vae.decoder, test), time.perf_counter() - t)
    rows = [[n, f"{e:.3f}", f"{ll:.3f}", f"{s:.1f}"] for n, (e, ll, s) in results.items()]
    text = format_table(["model", "test ELBO/image", "test log p(x) (K=500)", "train s"], rows)
    log(text)
    ref_elbo = results["hand-written PyTorch (analytic KL)"][0]
    gap = results["pyro_reparam VAE, kl='analytic'"][0] - ref_elbo
    log(f"plugin (analytic) minus reference: {gap:+.3f} nats/image (acceptance: within 0.3)")
    summary = {
        "epochs": epochs,
        "results": {
            n: {"test_elbo": e, "test_log_likelihood": ll, "seconds": s}
            for n, (e, ll, s) in results.items()
        },
        "plugin_minus_reference": gap,
        "quick": quick,
    }
    write(
        out,
        "vae_reference",
        summary,
        f"VAE on digits vs a hand-written PyTorch VAE ({epochs} epochs, CPU)",
        f"```\n{text}\n```\n\nplugin (analytic KL) minus reference: {gap:+.3f} nats/image\n",
    )
    return summary
