"""A VAE with discrete latents: binary (a sigmoid belief net's top layer) or categorical."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import kl_divergence

from pyro_reparam.models.likelihoods import (
    check_likelihood,
    importance_log_likelihood,
    pixel_distribution,
    pixel_mean,
)
from pyro_reparam.models.nets import check_rows, mlp
from pyro_reparam.models.registration import module_params

LATENTS = ("bernoulli", "categorical")
ESTIMATORS = ("score", "relaxed", "enumerate")
MAX_ENUMERATION = 64


class DiscreteVAE(nn.Module):
    """Variational autoencoder with discrete latents.

    ``latent="bernoulli"``: ``z in {0, 1}^L``, ``p(z) = prod_l Bernoulli(sigmoid(a_l))`` with
    learned prior logits ``a``; ``latent="categorical"``: ``L`` one-hot variables with ``C``
    categories each, uniform prior. ``p(x | z)`` is an MLP decoder with a pixel likelihood;
    ``q(z | x)`` an MLP encoder giving the logits. Site ``"z"`` has event shape ``(L,)`` or
    ``(L, C)`` inside the ``"data"`` plate.

    ``estimator`` sets how the guide samples ``z``:

    * ``"score"``: the exact family; :func:`pyro_reparam.route` gives it the score-function ELBO
      with leave-one-out baselines over 4 particles (the default);
    * ``"relaxed"``: straight-through Gumbel-softmax / relaxed Bernoulli at ``self.temperature``
      (pathwise, biased; anneal with :meth:`anneal`);
    * ``"enumerate"``: exact parallel enumeration, feasible for one latent variable with at most
      64 values (``num_latents=1``).
    """

    def __init__(
        self,
        x_dim: int = 64,
        *,
        latent: str = "bernoulli",
        num_latents: int = 64,
        num_categories: int = 10,
        hidden: Sequence[int] = (200,),
        activation: str = "tanh",
        likelihood: str = "bernoulli",
        estimator: str = "score",
        temperature: float = 1.0,
        name: str = "dvae",
    ):
        super().__init__()
        if latent not in LATENTS:
            raise ValueError(f"DiscreteVAE: latent must be one of {LATENTS}, got {latent!r}")
        if estimator not in ESTIMATORS:
            raise ValueError(
                f"DiscreteVAE: estimator must be one of {ESTIMATORS}, got {estimator!r}"
            )
        self.latent = latent
        self.num_latents = int(num_latents)
        self.num_categories = int(num_categories) if latent == "categorical" else 2
        support = self.num_categories**self.num_latents
        if estimator == "enumerate" and (self.num_latents != 1 or support > MAX_ENUMERATION):
            raise ValueError(
                f"DiscreteVAE: estimator='enumerate' sums over all {self.num_categories}^"
                f"{self.num_latents} latent values, feasible only for num_latents=1 with at most "
                f"{MAX_ENUMERATION} values; use estimator='score' or 'relaxed'"
            )
        self.x_dim = int(x_dim)
        self.likelihood = check_likelihood(likelihood)
        self.estimator = estimator
        self.temperature = float(temperature)
        self.name = name
        code = self.num_latents * (self.num_categories if latent == "categorical" else 1)
        self.encoder = mlp([self.x_dim, *hidden, code], activation)
        self.decoder = mlp([code, *hidden[::-1], self.x_dim], activation)
        self.prior_logits = nn.Parameter(torch.zeros(self.num_latents))
        self.log_sigma = nn.Parameter(torch.full((self.x_dim,), -1.0))

    # -- distributions -------------------------------------------------------------------------
    def _flat(self, z: torch.Tensor) -> torch.Tensor:
        return z.flatten(-2) if self.latent == "categorical" else z

    def prior(self, batch: int):
        """``p(z)`` for ``batch`` data points (batch shape ``(batch,)``)."""
        if self.latent == "bernoulli":
            return dist.Bernoulli(logits=self.prior_logits.expand(batch, -1)).to_event(1)
        logits = self.prior_logits.new_zeros(batch, self.num_latents, self.num_categories)
        return dist.OneHotCategorical(logits=logits).to_event(1)

    def posterior(self, x: torch.Tensor, *, relaxed: bool = False):
        """``q(z | x)``; with ``relaxed`` its straight-through relaxation at ``temperature``."""
        check_rows(x, self.x_dim, "DiscreteVAE")
        logits = self.encode(x)
        t = torch.tensor(self.temperature, dtype=logits.dtype, device=logits.device)
        # The straight-through relaxations score the soft sample, which sits on the simplex
        # only up to float rounding; Pyro's support check would reject it.
        if self.latent == "bernoulli":
            q = (
                dist.RelaxedBernoulliStraightThrough(t, logits=logits, validate_args=False)
                if relaxed
                else dist.Bernoulli(logits=logits)
            )
        else:
            q = (
                dist.RelaxedOneHotCategoricalStraightThrough(t, logits=logits, validate_args=False)
                if relaxed
                else dist.OneHotCategorical(logits=logits)
            )
        return q.to_event(1)

    def likelihood_given(self, z: torch.Tensor):
        return pixel_distribution(self.likelihood, self.decoder(self._flat(z)), self.log_sigma)

    # -- Pyro model and guide ------------------------------------------------------------------
    def model(self, x: torch.Tensor) -> None:
        """``p(x, z)`` over a batch ``x`` of shape ``(B, x_dim)``."""
        check_rows(x, self.x_dim, "DiscreteVAE")
        self._register_model()
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self._model_prior(x.shape[0]))
            if self.estimator == "enumerate":  # an index (Bernoulli) or a one-hot (L = 1)
                z = z.unsqueeze(-1).to(x.dtype) if self.latent == "bernoulli" else z.unsqueeze(-2)
            pyro.sample("x", self.likelihood_given(z), obs=x)

    def _model_prior(self, batch):
        if self.estimator == "enumerate":  # one variable: drop the event dim of size 1
            return self._single(self.prior(batch))
        return self.prior(batch)

    def _single(self, q):
        base = q.base_dist
        if self.latent == "bernoulli":
            logit = base.logits[..., 0]
            return dist.Categorical(logits=torch.stack([-logit, logit], -1) / 2)
        return dist.OneHotCategorical(logits=base.logits[..., 0, :])

    def _register_model(self) -> None:
        """The model's parameters in Pyro's param store (what SVI steps)."""
        pyro.module(f"{self.name}.decoder", self.decoder)
        pyro.param(f"{self.name}.prior_logits", self.prior_logits)
        if self.likelihood == "gaussian":
            pyro.param(f"{self.name}.log_sigma", self.log_sigma)

    def param_entries(self) -> list[tuple[str, torch.Tensor]]:
        """``(param-store name, tensor)`` of what the model's and the guide's registrations
        register."""
        named = module_params(f"{self.name}.decoder", self.decoder)
        named.append((f"{self.name}.prior_logits", self.prior_logits))
        if self.likelihood == "gaussian":
            named.append((f"{self.name}.log_sigma", self.log_sigma))
        return named + module_params(f"{self.name}.encoder", self.encoder)

    def _register_guide(self) -> None:
        pyro.module(f"{self.name}.encoder", self.encoder)

    def elbo(self, num_particles: int = 4):
        """The routed default ELBO of ``estimator="score"`` (score function, leave-one-out
        baselines over ``num_particles`` vectorized particles), computed directly from the
        module: :class:`~pyro_reparam.models.discrete_vae_elbo.DiscreteVAEELBO`. Other
        estimators: route the model (``pyro_reparam.route(dvae.model, dvae.guide, x)``)."""
        from pyro_reparam.models.discrete_vae_elbo import DiscreteVAEELBO

        return DiscreteVAEELBO(self, num_particles=num_particles)

    def direct_elbo(self, plan):
        """:meth:`elbo` for a :func:`pyro_reparam.route` plan of this model's own pair when the
        plan is what it computes (``estimator="score"``, site ``"z"`` to the score function
        with leave-one-out over ``K >= 2`` vectorized particles, ``ScoreFunctionELBO``, no
        linear-layer handler); else ``None`` (``fit`` then uses the traced plan)."""
        route = plan.sites.get("z")
        if (
            self.estimator != "score"
            or plan.linear
            or set(plan.sites) != {"z"}
            or route.estimator != "score"
            or route.variance_reduction != "loo"
            or plan.elbo_class != "ScoreFunctionELBO"
            or plan.num_particles < 2
            or not plan.vectorize_particles
        ):
            return None
        return self.elbo(plan.num_particles)

    def guide(self, x: torch.Tensor) -> None:
        """``q(z | x)``, sampled as :attr:`estimator` says."""
        self._register_guide()
        with pyro.plate("data", x.shape[0]):
            if self.estimator == "enumerate":
                q = self._single(self.posterior(x))
                pyro.sample("z", q, infer={"enumerate": "parallel"})
            else:
                pyro.sample("z", self.posterior(x, relaxed=self.estimator == "relaxed"))

    def anneal(self, epoch: int, *, start: float = 1.0, rate: float = 0.05, minimum: float = 0.5):
        """Set ``temperature = max(minimum, start * exp(-rate * epoch))`` (Jang et al. 2017)."""
        self.temperature = max(minimum, start * float(torch.exp(torch.tensor(-rate * epoch))))

    # -- using a fitted model ------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``q(z | x)``: ``(B, L)``, or ``(B, L, C)`` for categorical latents."""
        logits = self.encoder(x)
        if self.latent == "categorical":
            logits = logits.unflatten(-1, (self.num_latents, self.num_categories))
        return logits

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``E[x | z]`` for latents ``z`` (hard or soft, ``(B, L)`` or ``(B, L, C)``)."""
        return pixel_mean(self.likelihood, self.decoder(self._flat(z)))

    def _mode(self, logits):
        if self.latent == "bernoulli":
            return (logits > 0).to(logits.dtype)
        return nn.functional.one_hot(logits.argmax(-1), self.num_categories).to(logits.dtype)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``E[x | z*]`` with ``z*`` the most probable latent under ``q(z | x)``."""
        return self.decode(self._mode(self.encode(x)))

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """``E[x | z]`` for ``n`` draws ``z ~ p(z)``."""
        return self.decode(self.prior(n).sample())

    @torch.no_grad()
    def interpolate(self, x1: torch.Tensor, x2: torch.Tensor, steps: int = 8) -> torch.Tensor:
        """Decode ``steps`` points on the line between the posterior probabilities of ``x1``
        and ``x2`` (soft latents: the decoder's response to mixed codes)."""
        p1, p2 = self._probs(x1.reshape(1, -1)), self._probs(x2.reshape(1, -1))
        w = torch.linspace(0, 1, steps, device=p1.device, dtype=p1.dtype)
        w = w.reshape((-1,) + (1,) * (p1.dim() - 1))
        return self.decode((1 - w) * p1 + w * p2)

    def _probs(self, x):
        logits = self.encode(x)
        return torch.sigmoid(logits) if self.latent == "bernoulli" else logits.softmax(-1)

    @torch.no_grad()
    def kl(self, x: torch.Tensor) -> torch.Tensor:
        """``KL(q(z | x) || p(z))`` per data point, in nats, shape ``(B,)`` (closed form)."""
        q, p = self.posterior(x), self.prior(x.shape[0])
        return kl_divergence(q, p)

    @torch.no_grad()
    def kl_per_latent(self, x: torch.Tensor) -> torch.Tensor:
        """``KL(q(z_l | x) || p(z_l))`` per data point and latent variable, in nats, shape
        ``(B, L)``; its row sums are :meth:`kl`."""
        q, p = self.posterior(x).base_dist, self.prior(x.shape[0]).base_dist
        return kl_divergence(q, p)

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, num_samples: int = 100) -> torch.Tensor:
        """Importance-sampled ``log p(x)`` per data point with ``num_samples`` draws from
        ``q(z | x)``; shape ``(B,)``."""
        q, p = self.posterior(x), self.prior(x.shape[0])
        z = q.sample((num_samples,))
        log_w = self.likelihood_given(z).log_prob(x) + p.log_prob(z) - q.log_prob(z)
        return importance_log_likelihood(log_w)
