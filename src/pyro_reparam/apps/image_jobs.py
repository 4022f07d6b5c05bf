"""The command-line jobs ``pyro-reparam train vae`` and ``train dvae``: train, score, draw.

Each writes into its output folder: ``metrics.json``, ``elbo.png``, ``reconstructions.png``,
``samples.png``, ``interpolation.png``, ``latent_space.png`` (2-D Gaussian latents), for the
VAE ``khat.png`` (per-image VI k-hat of the encoder) and the checkpoint, and prints where they
are.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyro
import torch

from pyro_reparam.apps.data import ImageData, load_images
from pyro_reparam.apps.plots import image_rows, latent_scatter
from pyro_reparam.diagnostics import (
    check_collapse,
    check_data_scaling,
    check_plateau,
    save_figure,
    vi_khat,
)
from pyro_reparam.plotting import pyplot
from pyro_reparam.train import fit


@dataclass
class ImageJob:
    """Options shared by the image jobs (the CLI's flags)."""

    data: str = "digits"
    data_key: str | None = None
    label_key: str | None = None
    resume: bool = False
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    device: str = "cpu"
    out: Path = Path("runs/vae")
    seed: int = 0
    iw_samples: int = 500
    khat_particles: int = 200
    progress: bool = True


def _load(job: ImageJob, binarize: bool) -> tuple[ImageData, ImageData]:
    if job.data == "digits":
        train, test = load_images("digits", "train"), load_images("digits", "test")
    else:
        full = load_images(job.data, key=job.data_key, label_key=job.label_key)
        n_test = max(1, len(full) // 5)
        g = torch.Generator().manual_seed(0)
        perm = torch.randperm(len(full), generator=g)
        train, test = (_subset(full, perm[n_test:]), _subset(full, perm[:n_test]))
    if binarize:
        train, test = train.binarized(), test.binarized()
    return train, test


def _subset(data: ImageData, idx: torch.Tensor) -> ImageData:
    labels = None if data.labels is None else data.labels[idx]
    return ImageData(data.images[idx], labels, data.shape, data.name)


def _pair(test: ImageData, a: int = 2, b: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """A test image of digit ``a`` and one of ``b`` (the first two images without labels)."""
    if test.labels is None or not ((test.labels == a).any() and (test.labels == b).any()):
        return test.images[0], test.images[1]
    return test.images[test.labels == a][0], test.images[test.labels == b][0]


def _start(job: ImageJob) -> tuple[Path, torch.device]:
    """The output folder (created) and the device; a fresh param store and seed."""
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    pyro.clear_param_store()
    torch.manual_seed(job.seed)
    return out, torch.device(job.device)


def _finish(metrics, job, history, log_px, seconds, files, out) -> dict:
    """Add what every image job reports, write ``metrics.json`` and say where things are."""
    metrics |= {
        "epochs": job.epochs,
        "train_elbo": history.train_elbo,
        "test_elbo": history.val_elbo,
        "final_test_elbo": history.val_elbo[-1],
        "test_log_likelihood": log_px,
        "log_likelihood_samples": job.iw_samples,
        "seconds": seconds,
        "device": job.device,
        "files": {k: str(v) for k, v in files.items()} | {"checkpoint": str(history.checkpoint)},
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _report(metrics, out)
    return metrics


def _quiet(_message: str) -> None:
    """``--quiet``: no routing plan or resume message either."""


def _fit(net, job: ImageJob, train: ImageData, test: ImageData, out: Path, **options):
    """Train ``net.model``/``net.guide`` with the job's settings; returns the history, the
    training seconds and the test images on the device (RNG reseeded for scoring)."""
    t = time.perf_counter()
    history = fit(
        net.model,
        net.guide,
        train.images,
        optim=pyro.optim.Adam({"lr": job.lr}),
        epochs=job.epochs,
        batch_size=job.batch_size,
        device=job.device,
        seed=job.seed,
        val_data=test.images,
        checkpoint_dir=out,
        resume=job.resume,
        progress=job.progress,
        log=print if job.progress else _quiet,
        **options,
    )
    seconds = time.perf_counter() - t
    net.eval()
    torch.manual_seed(job.seed)
    return history, seconds, test.images.to(job.device)


def _check_fit(net, job: ImageJob, history, train: ImageData, x_test: torch.Tensor) -> int:
    """Warn about a fit that failed silently: an ELBO that stalled, minibatches that leave
    global latents unscaled, collapsed latents (returned: how many)."""
    check_plateau(history)
    batch = (train.images[: job.batch_size].to(job.device),)
    check_data_scaling(net.model, net.guide, batch, len(train.images))
    return check_collapse(net, x_test)


def train_vae(job: ImageJob, *, latent_dim: int = 2, likelihood: str = "continuous_bernoulli",
              kl: str = "analytic", iwae: int | None = None, hidden: int = 256,
              conv: bool = False) -> dict:  # fmt: skip
    """Train :class:`~pyro_reparam.models.VAE` and a plain autoencoder; write the outputs."""
    from pyro_reparam.models import VAE, Autoencoder

    train, test = _load(job, binarize=likelihood == "bernoulli")
    out, dev = _start(job)
    arch = {"hidden": (hidden,), "likelihood": likelihood, "conv": conv, "image_shape": train.shape}
    vae = VAE(train.images.shape[1], latent_dim, kl=kl, iwae_particles=iwae, **arch)
    history, seconds, x_test = _fit(vae, job, train, test, out, elbo=vae.elbo())
    collapsed = _check_fit(vae, job, history, train, x_test)
    log_px = vae.log_likelihood(x_test, num_samples=job.iw_samples).mean().item()
    ae = Autoencoder(train.images.shape[1], latent_dim, **arch).to(dev)
    ae_losses = ae.fit(train.images.to(dev), epochs=job.epochs, batch_size=job.batch_size,
                       lr=job.lr, seed=job.seed)  # fmt: skip
    shape = train.shape
    files = {"elbo": history.plot(out / "elbo.png", "VAE ELBO per image")}
    files["reconstructions"] = image_rows(
        [x_test[:12], vae.reconstruct(x_test[:12]), ae.reconstruct(x_test[:12])],
        ["data", "VAE", "autoencoder"], shape, out / "reconstructions.png",
        "test images and their reconstructions",
    )  # fmt: skip
    files["samples"] = image_rows(
        list(vae.sample(36).reshape(3, 12, -1)), ["", "", ""], shape, out / "samples.png",
        "VAE samples: decode(z), z ~ N(0, I)",
    )  # fmt: skip
    a, b = _pair(test)
    a, b = a.to(dev), b.to(dev)
    files["interpolation"] = image_rows(
        [vae.interpolate(a, b, 10), ae.interpolate(a, b, 10)],
        ["VAE", "autoencoder"], shape, out / "interpolation.png",
        "from a 2 to a 9 along the line between their codes",
    )  # fmt: skip
    if latent_dim == 2:
        files["latent_space"] = latent_scatter(vae.encode(x_test), test.labels,
                                               out / "latent_space.png")  # fmt: skip
    khat = vi_khat(vae.model, vae.guide, x_test[:100], num_particles=job.khat_particles,
                   plate="data")  # fmt: skip
    files["khat"] = _khat_histogram(khat, out / "khat.png")
    metrics = {
        "model": "VAE",
        "data": train.name,
        "latent_dim": latent_dim,
        "likelihood": likelihood,
        "kl": kl,
        "iwae_particles": iwae,
        "autoencoder_final_train_nll": ae_losses[-1],
        "collapsed_latents": collapsed,
        "vi_khat_per_datapoint": {
            "median": float(np.median(khat)),
            "fraction_above_0.7": float((khat > 0.7).mean()),
            "test_images": len(khat),
            "particles": job.khat_particles,
        },
    }
    return _finish(metrics, job, history, log_px, seconds, files, out)


def train_dvae(job: ImageJob, *, latent: str = "bernoulli", num_latents: int = 64,
               num_categories: int = 10, estimator: str = "score", hidden: int = 200,
               temperature: float = 1.0) -> dict:  # fmt: skip
    """Train :class:`~pyro_reparam.models.DiscreteVAE` through the router; write the outputs."""
    from pyro_reparam.models import DiscreteVAE

    train, test = _load(job, binarize=True)
    out, dev = _start(job)
    dvae = DiscreteVAE(train.images.shape[1], latent=latent, num_latents=num_latents,
                       num_categories=num_categories, hidden=(hidden,), estimator=estimator,
                       temperature=temperature)  # fmt: skip
    callbacks = [lambda epoch, _r: dvae.anneal(epoch)] if estimator == "relaxed" else []
    history, seconds, x_test = _fit(dvae, job, train, test, out, callbacks=callbacks)
    collapsed = _check_fit(dvae, job, history, train, x_test)
    log_px = dvae.log_likelihood(x_test, num_samples=job.iw_samples).mean().item()
    shape = train.shape
    files = {"elbo": history.plot(out / "elbo.png", f"DiscreteVAE ({estimator}) ELBO per image")}
    files["reconstructions"] = image_rows(
        [x_test[:12], dvae.reconstruct(x_test[:12])], ["data", "DiscreteVAE"], shape,
        out / "reconstructions.png", "test images and reconstructions from the most probable code",
    )  # fmt: skip
    files["samples"] = image_rows(
        list(dvae.sample(36).reshape(3, 12, -1)), ["", "", ""], shape, out / "samples.png",
        "DiscreteVAE samples: E[x | z], z ~ p(z)",
    )  # fmt: skip
    a, b = _pair(test)
    files["interpolation"] = image_rows(
        [dvae.interpolate(a.to(dev), b.to(dev), 10)], ["DiscreteVAE"], shape,
        out / "interpolation.png", "from a 2 to a 9 (soft codes)",
    )  # fmt: skip
    metrics = {
        "model": "DiscreteVAE",
        "data": train.name,
        "latent": latent,
        "num_latents": num_latents,
        "estimator": estimator,
        "routing": str(history.plan),
        "kl_per_image": dvae.kl(x_test).mean().item(),
        "collapsed_latents": collapsed,
    }
    return _finish(metrics, job, history, log_px, seconds, files, out)


def _khat_histogram(khat: np.ndarray, path: Path) -> Path:
    """Per-image VI k-hat of the amortized guide, with the 0.5 and 0.7 reading lines."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.hist(khat[np.isfinite(khat)], bins=25, color="tab:blue", alpha=0.8)
    top = ax.get_ylim()[1] * 0.95
    for x, label, side in ((0.5, "good < 0.5 ", "right"), (0.7, " > 0.7 unreliable", "left")):
        ax.axvline(x, color="k", ls="--", lw=1)
        ax.text(x, top, label, fontsize=8, va="top", ha=side)
    ax.set_xlabel("Pareto k-hat of p(x, z) / q(z | x), one per test image")
    ax.set_ylabel("images")
    ax.set_title("Is the encoder a good importance sampler?")
    return save_figure(fig, path)


def _report(metrics: dict, out: Path) -> None:
    print(
        f"{metrics['model']} on {metrics['data']}: test ELBO {metrics['final_test_elbo']:.3f} "
        f"nats/image, importance-sampled log p(x) {metrics['test_log_likelihood']:.3f} "
        f"(K={metrics['log_likelihood_samples']}), {metrics['seconds']:.1f} s training"
    )
    print(
        f"wrote {out}/: metrics.json, " + ", ".join(Path(p).name for p in metrics["files"].values())
    )
