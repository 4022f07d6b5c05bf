"""The Gaussian-latent VAE, and the plain autoencoder with the same architecture."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import ELBO
from torch import nn

from pyro_reparam.models.likelihoods import (
    check_likelihood,
    importance_log_likelihood,
    pixel_distribution,
    pixel_mean,
)
from pyro_reparam.models.nets import check_rows, mlp
from pyro_reparam.models.registration import module_params

KL_ESTIMATORS = ("analytic", "mc")
IWAE_GRADIENTS = ("dreg", "plain")


class _Coder(nn.Module):
    """Encoder ``x -> 2 * latent`` and decoder ``z -> x_dim`` (MLP, or convolutional)."""

    def __init__(self, x_dim, latent_dim, hidden, activation, image_shape, conv):
        super().__init__()
        if not conv:
            self.encoder = mlp([x_dim, *hidden, 2 * latent_dim], activation)
            self.decoder = mlp([latent_dim, *hidden[::-1], x_dim], activation)
            return
        if image_shape is None or any(s % 4 for s in image_shape):
            raise ValueError(
                f"conv=True needs image_shape=(H, W) with H and W divisible by 4, got {image_shape}"
            )
        h, w = image_shape[0] // 4, image_shape[1] // 4
        width = hidden[0] if hidden else 128
        self.encoder = nn.Sequential(
            nn.Unflatten(-1, (1, *image_shape)),
            nn.Conv2d(1, 32, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2, 1),
            nn.ReLU(),
            nn.Flatten(-3),
            nn.Linear(64 * h * w, width),
            nn.ReLU(),
            nn.Linear(width, 2 * latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, width),
            nn.ReLU(),
            nn.Linear(width, 64 * h * w),
            nn.ReLU(),
            nn.Unflatten(-1, (64, h, w)),
            nn.ConvTranspose2d(64, 32, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 1, 4, 2, 1),
            nn.Flatten(-3),
        )


def _decode_batched(decoder: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Apply ``decoder`` to ``z`` of shape ``(..., latent)`` (conv layers want one batch dim)."""
    if z.dim() == 2:
        return decoder(z)
    flat = z.reshape(-1, z.shape[-1])
    out = decoder(flat)
    return out.reshape(*z.shape[:-1], out.shape[-1])


class _Decoding(nn.Module):
    """``decode``, ``reconstruct`` and ``interpolate`` for a model with ``encode``, a
    ``decoder`` and a pixel ``likelihood``."""

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``E[x | z]``, shape ``(B, x_dim)``."""
        return pixel_mean(self.likelihood, _decode_batched(self.decoder, z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def interpolate(self, x1: torch.Tensor, x2: torch.Tensor, steps: int = 8) -> torch.Tensor:
        """Decode ``steps`` evenly spaced points between the codes of ``x1`` and ``x2``."""
        z1, z2 = self.encode(x1.reshape(1, -1)), self.encode(x2.reshape(1, -1))
        w = torch.linspace(0, 1, steps, device=z1.device, dtype=z1.dtype)[:, None]
        return self.decode((1 - w) * z1 + w * z2)


class VAE(_Decoding):
    """Variational autoencoder with a Gaussian latent (Kingma & Welling 2014).

    ``p(z) = N(0, I_d)``, ``p(x | z)`` a pixel likelihood on the decoder output,
    ``q(z | x) = N(mu(x), diag sigma(x)^2)`` with ``z = mu + sigma * eps`` (pathwise).
    ``x`` has shape ``(B, x_dim)``; site ``"z"`` has event shape ``(d,)`` in plate ``"data"``.

    :param likelihood: ``"bernoulli"`` (binary data), ``"continuous_bernoulli"`` (intensities in
        [0, 1]; Loaiza-Ganem & Cunningham 2019), ``"gaussian"`` (learned per-pixel sigma).
    :param kl: ``"analytic"`` (closed-form KL, ``TraceMeanField_ELBO``) or ``"mc"`` (Monte Carlo,
        ``Trace_ELBO``); ignored when ``iwae_particles`` is set.
    :param iwae_particles: train the importance-weighted bound with K particles (Burda et al.
        2016; Pyro's ``RenyiELBO`` with alpha = 0).
    :param iwae_gradient: the gradient estimator of that bound (the bound itself is the same):
        ``"dreg"`` (default; doubly reparameterized encoder gradient, Tucker et al. 2019, whose
        signal-to-noise ratio does not decay with K) or ``"plain"`` (the IWAE gradient).
    :param conv: convolutional encoder/decoder for images of ``image_shape`` (H, W divisible by 4).
    """

    def __init__(
        self,
        x_dim: int = 64,
        latent_dim: int = 2,
        *,
        hidden: Sequence[int] = (128,),
        activation: str = "relu",
        likelihood: str = "continuous_bernoulli",
        kl: str = "analytic",
        iwae_particles: int | None = None,
        iwae_gradient: str = "dreg",
        conv: bool = False,
        image_shape: tuple[int, int] | None = None,
        name: str = "vae",
    ):
        super().__init__()
        if kl not in KL_ESTIMATORS:
            raise ValueError(f"VAE: kl must be one of {KL_ESTIMATORS}, got {kl!r}")
        if iwae_particles is not None and iwae_particles < 2:
            raise ValueError(f"VAE: iwae_particles must be >= 2, got {iwae_particles}")
        if iwae_gradient not in IWAE_GRADIENTS:
            raise ValueError(
                f"VAE: iwae_gradient must be one of {IWAE_GRADIENTS}, got {iwae_gradient!r}"
            )
        self.x_dim, self.latent_dim = int(x_dim), int(latent_dim)
        self.likelihood = check_likelihood(likelihood)
        self.kl_estimator, self.iwae_particles, self.name = kl, iwae_particles, name
        self.iwae_gradient = iwae_gradient
        coder = _Coder(self.x_dim, self.latent_dim, tuple(hidden), activation, image_shape, conv)
        self.encoder, self.decoder = coder.encoder, coder.decoder
        self.log_sigma = nn.Parameter(torch.full((self.x_dim,), -2.0))

    def elbo(self, num_particles: int = 1, *, traced: bool = False) -> ELBO:
        """The ELBO this VAE was configured for (plate nesting 1, vectorized particles).

        Default: the fast one (:mod:`~pyro_reparam.models.vae_elbo`), a subclass of the Pyro
        ELBO below that computes the same loss and gradients straight from the networks when
        handed this VAE's own :meth:`model`/:meth:`guide`, and is that Pyro ELBO otherwise.
        ``traced=True``: the Pyro ELBO itself (``TraceMeanField_ELBO`` for ``kl="analytic"``,
        ``Trace_ELBO`` for ``"mc"``, ``RenyiELBO(alpha=0)`` / ``DReG_ELBO`` for IWAE).
        ``num_particles`` is ignored with ``iwae_particles`` (K is the bound's)."""
        from pyro_reparam.models.vae_elbo import vae_elbo

        return vae_elbo(self, num_particles, traced=traced)

    def direct_elbo(self, plan) -> ELBO | None:
        """The fast ELBO of a :func:`pyro_reparam.route` plan of this VAE's own pair, when the
        plan is one it computes: site ``"z"`` pathwise under ``TraceMeanField_ELBO`` (closed-form
        KL) or ``Trace_ELBO`` (Monte Carlo KL), whatever ``kl`` says (the plan decides), no
        IWAE, no linear-layer handler, one particle or vectorized ones; else ``None`` (``fit``
        then uses the traced plan)."""
        from pyro_reparam.models.vae_elbo import VAEMeanFieldELBO, VAETraceELBO

        classes = {"TraceMeanField_ELBO": VAEMeanFieldELBO, "Trace_ELBO": VAETraceELBO}
        route = plan.sites.get("z")
        if (
            self.iwae_particles
            or plan.linear
            or set(plan.sites) != {"z"}
            or route.estimator != "pathwise"
            or plan.elbo_class not in classes
            or plan.max_plate_nesting != 1
            or not (plan.num_particles == 1 or plan.vectorize_particles)
        ):
            return None
        return classes[plan.elbo_class](self, num_particles=plan.num_particles,
                                        max_plate_nesting=1, vectorize_particles=True)  # fmt: skip

    def register_guide_params(self) -> None:
        """The guide's ``pyro.module`` call (the fast ELBO makes the same one)."""
        pyro.module(f"{self.name}.encoder", self.encoder)

    def param_entries(self) -> list[tuple[str, torch.Tensor]]:
        """``(param-store name, tensor)`` of what :meth:`register_guide_params` and
        :meth:`register_model_params` register."""
        named = module_params(f"{self.name}.encoder", self.encoder)
        named += module_params(f"{self.name}.decoder", self.decoder)
        if self.likelihood == "gaussian":
            named.append((f"{self.name}.log_sigma", self.log_sigma))
        return named

    def register_model_params(self) -> None:
        """The model's ``pyro.module`` / ``pyro.param`` calls (the fast ELBO makes the same)."""
        pyro.module(f"{self.name}.decoder", self.decoder)
        if self.likelihood == "gaussian":
            pyro.param(f"{self.name}.log_sigma", self.log_sigma)

    def prior(self, batch_shape=()) -> dist.Distribution:
        # a fresh tensor, not log_sigma.new_zeros: a JIT trace would hold log_sigma as a constant
        p = self.log_sigma
        zeros = torch.zeros((*batch_shape, self.latent_dim), dtype=p.dtype, device=p.device)
        return dist.Normal(zeros, 1.0).to_event(1)

    def posterior_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu(x), sigma(x))`` of ``q(z | x)``, each ``(B, d)``; ``sigma = softplus + 1e-4``."""
        h = self.encoder(x)
        loc, raw = h[..., : self.latent_dim], h[..., self.latent_dim :]
        return loc, nn.functional.softplus(raw) + 1e-4

    def posterior(self, x: torch.Tensor) -> dist.Distribution:
        """``q(z | x)`` with batch shape ``x.shape[:-1]``."""
        check_rows(x, self.x_dim, "VAE")
        return dist.Normal(*self.posterior_params(x)).to_event(1)

    def likelihood_given(self, z: torch.Tensor) -> dist.Distribution:
        out = _decode_batched(self.decoder, z)
        return pixel_distribution(self.likelihood, out, self.log_sigma)

    def model(self, x: torch.Tensor) -> None:
        check_rows(x, self.x_dim, "VAE")
        self.register_model_params()
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x.shape[:1]))
            pyro.sample("x", self.likelihood_given(z), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        self.register_guide_params()
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.posterior(x))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean ``mu(x)``, shape ``(B, d)``."""
        return self.posterior(x).mean

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self.decode(self.prior((n,)).sample())

    @torch.no_grad()
    def kl_per_latent(self, x: torch.Tensor) -> torch.Tensor:
        """``KL(q(z_j | x) || N(0, 1)) = (mu_j^2 + sigma_j^2 - 1) / 2 - log sigma_j`` per data
        point and latent dimension, in nats, shape ``(B, d)``."""
        q = self.posterior(x).base_dist
        return torch.distributions.kl_divergence(q, dist.Normal(torch.zeros_like(q.loc), 1.0))

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, num_samples: int = 100) -> torch.Tensor:
        """Importance-sampled ``log p(x)`` per data point with ``num_samples`` draws from
        ``q(z | x)``, shape ``(B,)``."""
        q = self.posterior(x)
        z = q.sample((num_samples,))
        log_w = self.likelihood_given(z).log_prob(x) + self.prior().log_prob(z) - q.log_prob(z)
        return importance_log_likelihood(log_w)


class Autoencoder(_Decoding):
    """The deterministic autoencoder with :class:`VAE`'s architecture, trained by minimizing the
    same pixel negative log-likelihood of ``decode(encode(x))`` (no prior, no noise). It
    reconstructs well, but its latent space has no density: points between two codes need not
    decode to anything digit-like."""

    def __init__(self, x_dim: int = 64, latent_dim: int = 2, **kwargs):
        super().__init__()
        vae = VAE(x_dim, latent_dim, **kwargs)
        self.likelihood, self.latent_dim = vae.likelihood, latent_dim
        self.encoder, self.decoder, self.log_sigma = vae.encoder, vae.decoder, vae.log_sigma
        self.x_dim = vae.x_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[..., : self.latent_dim]

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Summed negative log-likelihood of the batch (``x`` checked against the support)."""
        check_rows(x, self.x_dim, "Autoencoder")
        _check_support(self.likelihood, x, "Autoencoder.loss")
        return self._nll(x)

    def _nll(self, x: torch.Tensor) -> torch.Tensor:
        from pyro_reparam.models.vae_estimators import pixel_log_prob

        return -pixel_log_prob(self, self.encode(x), x).sum()

    def fit(self, x: torch.Tensor, epochs: int = 100, batch_size: int = 128, lr: float = 1e-3,
            seed: int = 0) -> list[float]:  # fmt: skip
        """Adam on shuffled minibatches; returns the per-datum loss of each epoch. ``x`` is
        checked once, here, not at every step."""
        check_rows(x, self.x_dim, "Autoencoder")
        _check_support(self.likelihood, x, "Autoencoder.fit")
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        g = torch.Generator().manual_seed(seed)
        losses = []
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=g).to(x.device)
            total = 0.0
            for i in range(0, len(x), batch_size):
                loss = self._nll(x[perm[i : i + batch_size]])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item()
            losses.append(total / len(x))
        return losses


def _check_support(likelihood: str, x: torch.Tensor, who: str) -> None:
    from pyro_reparam.models.vae_elbo import in_support

    ok = in_support(likelihood, x)
    if ok is not None and not bool(ok):
        need = "binary (0 or 1)" if likelihood == "bernoulli" else "in [0, 1]"
        raise ValueError(
            f"{who}: likelihood={likelihood!r} needs x {need}, but x has values in "
            f"[{float(x.min()):.4g}, {float(x.max()):.4g}] (or NaN); "
            + ("binarize it (x > 0.5)" if likelihood == "bernoulli" else "rescale it")
            + " or use likelihood='gaussian'"
        )
