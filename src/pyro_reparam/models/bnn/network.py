"""Bayesian multilayer perceptrons with mean-field, local-reparameterization and Flipout guides."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import ELBO, TraceMeanField_ELBO
from torch import nn

from pyro_reparam.infer.hmc import HMCResult, hmc
from pyro_reparam.models.bnn.nngp import PriorScales, fit_prior_scales
from pyro_reparam.models.nets import ACTIVATIONS

TASKS = ("regression", "classification")
GUIDES = ("meanfield", "local", "flipout")
NOISE = ("homoscedastic", "heteroscedastic")
PRIORS = ("fan_in", "nngp")
SAMPLE_CHUNK = 100  # weight draws per batched forward pass in prediction

_GUIDE_NOTES = {
    "meanfield": ("-", "location-scale: W = mu + sigma * eps, one draw per batch"),
    "local": (
        "local reparameterization",
        "pre-activations b = x mu + sqrt(x^2 sigma^2) * eps drawn per example (Kingma et al. "
        "2015): same ELBO, independent noise per example, lower gradient variance",
    ),
    "flipout": (
        "flipout",
        "shared eps with per-example random signs, x mu + ((x * s) (sigma * eps)) * r (Wen et "
        "al. 2018): decorrelated per-example weights",
    ),
}


class BayesianMLP(nn.Module):
    """An MLP whose weights and biases are random variables, with a Gaussian mean-field guide.

    Model: ``W_l ~ N(0, s_l^2)`` elementwise with ``s_l = 1 / sqrt(fan_in)`` (``prior="fan_in"``)
    or a given scale, biases ``N(0, 1)``; or (``prior="nngp"``, ReLU regression) scales chosen
    from the data at the start of :meth:`fit` / :meth:`fit_hmc` by the exact marginal likelihood
    of the network's infinite-width limit (:func:`~pyro_reparam.models.bnn.nngp.fit_prior_scales`:
    ``W_l ~ N(0, s_w^2 / fan_in)``, ``b_l ~ N(0, s_b^2)``, output layer ``s_v``, ``s_c``;
    homoscedastic noise set to the fitted ``sigma``). ``f = MLP_W(x)``. Regression: ``y ~ N(f_1(x),
    sigma(x)^2)`` with ``sigma(x) = softplus(f_2(x))`` a second output of the same network
    (``noise="heteroscedastic"``, the default), or one learned ``sigma``
    (``noise="homoscedastic"``, type-II maximum likelihood). Classification:
    ``y ~ Categorical(logits=f)``. Sites ``layer{l}.weight`` (event shape ``(out, in)``) and
    ``layer{l}.bias``, ``y`` in plate ``"data"``. The guide's means start at a draw from the
    prior (zero biases would put every ReLU kink of a 1-D input at the origin).

    The heteroscedastic default was chosen on validation data carved out of the training
    part of the diabetes benchmark splits (``benchmarks/bnn_defaults.py``): a single noise
    level is what mean-field BNNs overestimate when they prune units.

    Guide: ``q(W) = prod N(mu, sigma^2)``. How the likelihood term is estimated is the
    ``guide`` option, shown in the routing table: ``"meanfield"`` samples ``W``;
    ``"local"`` samples the pre-activations of each example instead; ``"flipout"`` perturbs a
    shared draw with per-example signs. All three estimate the same ELBO, with the KL term in
    closed form (``TraceMeanField_ELBO``).

    Minibatches: ``model(x, y, num_data=N)`` scales the batch log-likelihood by ``N / B``, so
    ``ELBO = N / B * sum_batch log p(y | x, W) - KL(q || p)``.

    Exact posterior: :meth:`fit_hmc` samples ``p(W | data)`` itself by Hamiltonian Monte Carlo
    (all chains batched), for networks small enough to take full-data gradients. With one
    hidden layer, a factorized Gaussian cannot put much more uncertainty between two clusters
    of data than at them (Foong et al. 2019); with ``prior="nngp"``, HMC does
    (``benchmarks/bnn_gap.py``). After it,
    :meth:`predict` and friends use the HMC draws until the next :meth:`fit`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int = 1,
        hidden: Sequence[int] = (50,),
        *,
        task: str = "regression",
        prior: str | float = "fan_in",
        activation: str = "relu",
        guide: str = "local",
        noise: str | None = None,
        init_scale: float = 1e-3,
        name: str = "bnn",
    ):
        super().__init__()
        if noise is None:
            noise = "heteroscedastic" if task == "regression" else "homoscedastic"
        for option, value, allowed in (("task", task, TASKS), ("guide", guide, GUIDES),
                                       ("noise", noise, NOISE)):  # fmt: skip
            if value not in allowed:
                raise ValueError(f"BayesianMLP: {option} must be one of {allowed}, got {value!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"BayesianMLP: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}"
            )
        if not (prior in PRIORS or (isinstance(prior, (int, float)) and prior > 0)):
            raise ValueError(
                f"BayesianMLP: prior must be one of {PRIORS} or a positive scale, got {prior!r}"
            )
        if prior == "nngp" and (task != "regression" or activation != "relu" or not hidden):
            raise ValueError(
                "BayesianMLP: prior='nngp' needs task='regression', activation='relu' and at "
                "least one hidden layer (its marginal likelihood is closed-form only there); "
                "use prior='fan_in' or a scale"
            )
        if task == "classification" and noise == "heteroscedastic":
            raise ValueError("BayesianMLP: noise='heteroscedastic' is for regression")
        self.task, self.guide_kind, self.noise, self.name = task, guide, noise, name
        self.prior_kind = prior
        self.out_features = out_features
        outputs = out_features * (2 if noise == "heteroscedastic" else 1)
        self.sizes = [in_features, *hidden, outputs]
        self.activation = ACTIVATIONS[activation]()
        self.locs, self.raw_scales = nn.ParameterList(), nn.ParameterList()
        self.bias_locs, self.bias_raw_scales = nn.ParameterList(), nn.ParameterList()
        raw = math.log(math.expm1(init_scale))
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:], strict=True):
            self.locs.append(nn.Parameter(torch.randn(fan_out, fan_in) / math.sqrt(fan_in)))
            self.raw_scales.append(nn.Parameter(torch.full((fan_out, fan_in), raw)))
            self.bias_locs.append(nn.Parameter(torch.randn(fan_out)))
            self.bias_raw_scales.append(nn.Parameter(torch.full((fan_out,), raw)))
        self.log_noise = nn.Parameter(torch.tensor(0.0))
        self.register_buffer("prior_scales", self._fixed_prior_scales())
        y_shape = () if task == "classification" or out_features == 1 else (out_features,)
        self.register_buffer("x_mean", torch.zeros(in_features))
        self.register_buffer("x_std", torch.ones(in_features))
        self.register_buffer("y_mean", torch.zeros(y_shape))
        self.register_buffer("y_std", torch.ones(y_shape))
        self.prior_fit: PriorScales | None = None
        self.hmc_result: HMCResult | None = None

    # -- distributions -------------------------------------------------------------------------
    def _fixed_prior_scales(self) -> torch.Tensor:
        """``(layers, 2)``: the weight and bias prior scale of each layer (``prior="nngp"``:
        NaN until :meth:`_set_prior` has seen the data; a buffer, so a saved state keeps it)."""
        if self.prior_kind == "nngp":
            return torch.full((len(self.sizes) - 1, 2), math.nan)
        fixed = isinstance(self.prior_kind, (int, float))
        return torch.tensor([[float(self.prior_kind) if fixed else 1.0 / math.sqrt(fan_in), 1.0]
                             for fan_in in self.sizes[:-1]])  # fmt: skip

    def _set_prior(self, xs: torch.Tensor, ys: torch.Tensor) -> None:
        """``prior="nngp"``: the scales of maximal infinite-width marginal likelihood on the
        standardized training data."""
        if self.prior_kind != "nngp":
            return
        depth = len(self.sizes) - 2
        self.prior_fit = fit_prior_scales(xs, ys, depth)
        pf = self.prior_fit
        rows = [[pf.weight / math.sqrt(fan_in), pf.bias] for fan_in in self.sizes[:-2]]
        rows.append([pf.output_weight / math.sqrt(self.sizes[-2]), pf.output_bias])
        self.prior_scales.copy_(torch.tensor(rows))
        with torch.no_grad():
            self.log_noise.fill_(math.log(pf.noise))

    def _check_prior(self) -> None:
        if self.prior_scales.isnan().any():
            raise RuntimeError(
                "BayesianMLP: prior='nngp' is chosen from the training data; call fit or "
                "fit_hmc first (or use prior='fan_in')"
            )

    def _q(self, l: int):
        w = dist.Normal(self.locs[l], nn.functional.softplus(self.raw_scales[l])).to_event(2)
        b = dist.Normal(self.bias_locs[l], nn.functional.softplus(self.bias_raw_scales[l]))
        return w, b.to_event(1)

    # -- Pyro model and guide ------------------------------------------------------------------
    def model(self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None):
        pyro.module(self.name, self)
        self._check_prior()
        draws = []
        for l, (fan_in, fan_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:], strict=True)):
            s_w, s_b = self.prior_scales[l]
            w = pyro.sample(f"layer{l}.weight",
                            dist.Normal(x.new_zeros(fan_out, fan_in), s_w).to_event(2))  # fmt: skip
            b = pyro.sample(f"layer{l}.bias", dist.Normal(x.new_zeros(fan_out), s_b).to_event(1))
            draws.append((w, b))
        scale = 1.0 if num_data is None else num_data / x.shape[0]
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=scale):
            return pyro.sample("y", self._likelihood(self._forward(x, draws)), obs=y)

    def _forward(self, x: torch.Tensor, draws) -> torch.Tensor:
        """The network's output under the estimator :attr:`guide_kind`; ``draws``: ``(W, b)``
        per layer (used by weight sampling; local reparameterization and Flipout draw their
        own noise)."""
        h = x
        for l, (w, b) in enumerate(draws):
            h = self._layer(l, h, w, b)
            if l < len(self.sizes) - 2:
                h = self.activation(h)
        return self._mean_output(h)

    def _mean_output(self, h: torch.Tensor) -> torch.Tensor:
        """Drop the output dim of a network with a single output (``(..., B, 1) -> (..., B)``)."""
        return h.squeeze(-1) if self.out_features == 1 and self.noise == "homoscedastic" else h

    def _predictive_likelihood(self, xs: torch.Tensor, num_samples: int):
        """``p(y | x, W_s)`` for ``num_samples`` weight draws, batch shape ``(S, B)``."""
        return self._likelihood(self._mean_output(self.function_samples(xs, num_samples)))

    def _likelihood(self, f):
        if self.task == "classification":
            return dist.Categorical(logits=f)
        if self.noise == "heteroscedastic":
            loc = f[..., : self.out_features]
            scale = nn.functional.softplus(f[..., self.out_features :]) + 1e-3
            if self.out_features == 1:
                return dist.Normal(loc.squeeze(-1), scale.squeeze(-1))
            return dist.Normal(loc, scale).to_event(1)
        noise = self.log_noise.exp()
        return (
            dist.Normal(f, noise) if self.out_features == 1 else dist.Normal(f, noise).to_event(1)
        )

    def _layer(self, l: int, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """One affine layer under the chosen estimator (``w``, ``b``: the guide's draws)."""
        if self.guide_kind == "meanfield":
            return x @ w.transpose(-1, -2) + b.unsqueeze(-2)
        mu, sigma = self.locs[l], nn.functional.softplus(self.raw_scales[l])
        b_mu, b_sigma = self.bias_locs[l], nn.functional.softplus(self.bias_raw_scales[l])
        if self.guide_kind == "local":
            mean = x @ mu.T + b_mu
            var = x.pow(2) @ sigma.pow(2).T + b_sigma.pow(2)
            return mean + var.sqrt() * torch.randn_like(mean)
        eps = torch.randn_like(mu)
        sign_in = torch.randint_like(x, 2) * 2 - 1
        mean = x @ mu.T + b_mu
        sign_out = torch.randint_like(mean, 2) * 2 - 1
        noise_b = b_sigma * torch.randn_like(b_sigma)
        return mean + ((x * sign_in) @ (sigma * eps).T) * sign_out + noise_b

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None):
        pyro.module(self.name, self)
        vr, why = _GUIDE_NOTES[self.guide_kind]
        infer = {"pyro_reparam": {"variance_reduction": vr, "why": why}}
        for l in range(len(self.sizes) - 1):
            w, b = self._q(l)
            pyro.sample(f"layer{l}.weight", w, infer=infer)
            pyro.sample(f"layer{l}.bias", b, infer=infer)

    def elbo(self, num_particles: int = 1, *, num_data: int | None = None,
             traced: bool = False) -> ELBO:  # fmt: skip
        """Closed-form KL for the weights, Monte Carlo for the likelihood.

        The default is :class:`BayesianMLPELBO`, which computes this ELBO directly from the
        module (``num_data``: the training set size for the ``N / B`` scaling when the model
        is not called with it). ``traced=True`` gives Pyro's ``TraceMeanField_ELBO`` on
        :meth:`model` and :meth:`guide`: the same objective through Pyro's tracing, slower per
        step."""
        if traced:
            return TraceMeanField_ELBO(num_particles=num_particles)
        return BayesianMLPELBO(self, num_particles=num_particles, num_data=num_data)

    def _scaled_log_lik(self, x, y, num_data):
        """One differentiable draw of ``N / B * sum_batch log p(y | x, W)``, the weights drawn
        as :attr:`guide_kind` says."""
        layers = range(len(self.sizes) - 1)
        if self.guide_kind == "meanfield":
            draws = [tuple(q.rsample() for q in self._q(l)) for l in layers]
        else:
            draws = [(None, None) for _ in layers]
        scale = 1.0 if num_data is None else num_data / x.shape[0]
        return scale * self._likelihood(self._forward(x, draws)).log_prob(y).sum()

    # -- training on arrays --------------------------------------------------------------------
    def fit(self, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 1000, batch_size: int = 128,
            lr: float = 1e-2, seed: int = 0, progress: bool = False, **fit_kwargs):  # fmt: skip
        """Standardize ``x`` (and ``y`` for regression) with the training statistics, then train
        with :func:`pyro_reparam.fit` and ``ClippedAdam(lr)``. The history's records also hold
        the two ELBO terms on the training data: ``expected_log_likelihood`` (MC, 8 draws) and
        ``kl`` (closed form), in standardized units."""
        from pyro_reparam.train import fit as svi_fit

        xs, ys, device = self._prepare(x, y, fit_kwargs.pop("device", None))
        n = xs.shape[0]

        def terms(_epoch, record):
            with torch.no_grad():
                record["expected_log_likelihood"] = self._expected_log_lik(xs, ys, 8)
                record["kl"] = self.kl()

        model = lambda x, y: self.model(x, y, num_data=n)  # noqa: E731
        guide = lambda x, y: self.guide(x, y, num_data=n)  # noqa: E731
        optim = pyro.optim.ClippedAdam({"lr": lr, "clip_norm": 10.0})
        callbacks = [terms, *fit_kwargs.pop("callbacks", [])]
        elbo = fit_kwargs.pop("elbo", None) or self.elbo(num_data=n)
        return svi_fit(model, guide, (xs, ys), elbo=elbo, optim=optim, epochs=epochs,
                       batch_size=batch_size, seed=seed, progress=progress,
                       callbacks=callbacks, device=device, **fit_kwargs)  # fmt: skip

    def _prepare(self, x, y, device):
        """What both fits start with: move the network to ``device`` (default: the data's),
        set the standardization from ``(x, y)``, the ``nngp`` prior from the standardized data,
        and forget earlier HMC draws. Returns ``(xs, ys, device)``."""
        from pyro_reparam.train import resolve_device

        device = resolve_device(device or x.device)
        self.to(device)
        self._standardizer(x.to(device), y.to(device))
        xs, ys = self.transform(x, y)
        self._set_prior(xs, ys)
        self.hmc_result = None
        return xs, ys, device

    def fit_hmc(self, x: torch.Tensor, y: torch.Tensor, *, num_samples: int = 200,
                warmup: int = 300, num_chains: int = 16, num_steps: int = 32, map_steps: int = 500,
                seed: int = 0, device=None, progress: bool = False) -> HMCResult:  # fmt: skip
        """Sample the exact posterior ``p(W | x, y)`` by HMC, ``num_chains`` chains batched.

        A network's posterior has many modes and a chain stays near the one it starts in, so
        the pooled draws cover as many regions as there are chains; batched, 16 chains cost
        about what 4 do on a small network (on the gap toy, 4 chains gave a gap/near std
        ratio of 1.7-4.4 across seeds, 16 chains 3.8-4.3).

        Full-data log joint ``sum_l log N(W_l; 0, s_l^2) + sum_i log p(y_i | x_i, W)`` (up to
        a constant) on the standardized data. Regression needs ``noise="homoscedastic"``; the
        noise is held at ``exp(log_noise)``: the type-II estimate under ``prior="nngp"``, else
        the current value (1, the data's spread, before any fit). Each chain starts at a MAP
        estimate (``map_steps`` of Adam from its own prior draw), then runs ``warmup``
        adaptation and ``num_samples`` kept iterations of ``num_steps`` leapfrog steps
        (:func:`~pyro_reparam.infer.hmc.hmc`). Afterwards :meth:`predict`,
        :meth:`function_samples` and :meth:`log_predictive_density` use these draws (a later
        :meth:`fit` returns to the guide). Check mixing with :meth:`hmc_rhat`."""
        if self.noise == "heteroscedastic":
            raise ValueError(
                "BayesianMLP.fit_hmc: needs noise='homoscedastic'. With the noise as a network "
                "output the posterior density grows without bound where the net predicts a "
                "vanishing noise at a training point, and chains get stuck in those spikes; "
                "construct the network with noise='homoscedastic'"
            )
        xs, ys, device = self._prepare(x, y, device)
        torch.manual_seed(seed)
        scales = [(s_w.item(), s_b.item()) for s_w, s_b in self.prior_scales]
        init = torch.cat(
            [torch.cat([s_w * torch.randn(num_chains, o * i, device=device),
                        s_b * torch.randn(num_chains, o, device=device)], 1)
             for (s_w, s_b), i, o in zip(scales, self.sizes[:-1], self.sizes[1:], strict=True)],
            1,
        )  # fmt: skip

        def log_joint(theta: torch.Tensor) -> torch.Tensor:
            draws = self._unflatten(theta)
            lp = -0.5 * sum((w / s_w).pow(2).sum((-1, -2)) + (b / s_b).pow(2).sum(-1)
                            for (s_w, s_b), (w, b) in zip(scales, draws, strict=True))  # fmt: skip
            f = self._mean_output(self._batched_forward(xs, draws))
            return lp + self._likelihood(f).log_prob(ys).sum(-1)

        with torch.no_grad(), pyro.validation_enabled(False):  # diverging proposals are rejected
            init = _map_estimate(log_joint, init, map_steps)
            self.hmc_result = hmc(log_joint, init, num_samples=num_samples, warmup=warmup,
                                  num_steps=num_steps, progress=progress)  # fmt: skip
        return self.hmc_result

    @torch.no_grad()
    def hmc_rhat(self, x: torch.Tensor) -> torch.Tensor:
        """Rank-normalized split R-hat (ArviZ) of the network's mean output at each input
        ``x`` across the chains of :meth:`fit_hmc`: ``(B,)``. Weight-space R-hat is
        meaningless for a network (hidden units can swap between chains); function values
        are what predictions average. Values above 1.01 say: run longer or more chains."""
        import arviz as az

        if self.hmc_result is None:
            raise RuntimeError("BayesianMLP.hmc_rhat: call fit_hmc first")
        xs, _ = self.transform(x)
        samples = self.hmc_result.samples
        f = self._batched_forward(xs, self._unflatten(samples.flatten(0, 1)))
        f = f[..., 0].reshape(*samples.shape[:2], -1)
        return torch.as_tensor(az.rhat(f.cpu().numpy(), chain_axis=0, draw_axis=1))

    @torch.no_grad()
    def hmc_datatree(self, x: torch.Tensor, y: torch.Tensor, max_draws: int = 200):
        """An ArviZ ``DataTree`` of :meth:`fit_hmc`'s chains on data ``(x, y)``: the last
        layer's weights and bias as ``posterior`` (chain, draw, ...), ``log_likelihood`` and
        ``posterior_predictive`` of ``y`` (standardized units) and ``observed_data``, at most
        ``max_draws`` evenly spaced draws per chain. Unlike a variational fit, its R-hat, ESS
        and PSIS-LOO carry their MCMC meaning (:func:`pyro_reparam.diagnose`)."""
        import arviz as az

        if self.hmc_result is None:
            raise RuntimeError("BayesianMLP.hmc_datatree: call fit_hmc first")
        xs, ys = self.transform(x, y)
        samples = self.hmc_result.samples
        samples = samples[:, _evenly_spaced(samples.shape[1], min(max_draws, samples.shape[1]),
                                            samples.device)]  # fmt: skip
        chains, draws = samples.shape[:2]
        layers = self._unflatten(samples.flatten(0, 1))
        lik = self._likelihood(self._mean_output(self._batched_forward(xs, layers)))
        last = len(self.sizes) - 2
        w, b = layers[-1]

        def np_(t):
            return t.reshape(chains, draws, *t.shape[1:]).cpu().numpy()

        data = {
            "posterior": {f"layer{last}.weight": np_(w), f"layer{last}.bias": np_(b)},
            "log_likelihood": {"y": np_(lik.log_prob(ys))},
            "posterior_predictive": {"y": np_(lik.sample())},
            "observed_data": {"y": ys.cpu().numpy()},
        }
        dims = {"y": ["data"]} | {name: [f"{name}_dim_{i}" for i in range(v.ndim - 2)]
                                  for name, v in data["posterior"].items()}  # fmt: skip
        return az.from_dict(data, dims=dims)

    def _expected_log_lik(self, xs, ys, num_samples: int) -> float:
        """``E_q[sum_i log p(y_i | x_i, W)]`` by Monte Carlo."""
        lp = self._predictive_likelihood(xs, num_samples).log_prob(ys)
        return lp.sum().item() / num_samples

    def _standardizer(self, x, y):
        """Training statistics, kept as buffers so that ``.to(device)`` moves them and
        ``state_dict`` saves them (identity until the first fit)."""
        regression = self.task == "regression"
        stats = {
            "x_mean": x.mean(0),
            "x_std": x.std(0).clamp(min=1e-8),
            "y_mean": y.mean(0) if regression else x.new_zeros(()),
            "y_std": y.std(0).clamp(min=1e-8) if regression else x.new_ones(()),
        }
        for name, value in stats.items():
            self.register_buffer(name, value)

    def transform(self, x, y=None):
        """Inputs (and targets) in the standardized units the network sees, on the model's
        device."""
        x = x.to(self.x_mean.device)
        y = None if y is None else y.to(self.x_mean.device)
        xs = (x - self.x_mean) / self.x_std
        if y is None or self.task == "classification":
            return xs, y
        return xs, (y - self.y_mean) / self.y_std

    @torch.no_grad()
    def predict(self, x: torch.Tensor, num_samples: int = 200, quantiles=(0.05, 0.5, 0.95)):
        """Posterior predictive in original units. Regression: ``{"mean", "std", "quantiles"}``
        (quantiles of ``y`` draws, shape ``(len(quantiles), B)``); classification: ``{"probs"}``
        averaged over weight draws."""
        xs, _ = self.transform(x)
        if self.task == "classification":
            return {"probs": self.function_samples(xs, num_samples).softmax(-1).mean(0)}
        y = self._predictive_likelihood(xs, num_samples).sample() * self.y_std + self.y_mean
        q = torch.as_tensor(quantiles, dtype=y.dtype, device=y.device)
        return {"mean": y.mean(0), "std": y.std(0), "quantiles": torch.quantile(y, q, dim=0)}

    @torch.no_grad()
    def log_predictive_density(self, x: torch.Tensor, y: torch.Tensor, num_samples: int = 200):
        """Per-point ``log p(y | x, data)`` in original units (Jacobian of the standardization
        included)."""
        xs, ys = self.transform(x, y)
        lp = self.log_predictive(xs, ys, num_samples)
        return lp - torch.log(self.y_std) if self.task == "regression" else lp

    # -- terms, prediction ---------------------------------------------------------------------
    @torch.no_grad()
    def kl(self) -> float:
        """``KL(q(W) || p(W))`` in nats (closed form)."""
        return float(self._kl())

    def _kl(self) -> torch.Tensor:
        """Differentiable closed-form KL, summed over every weight and bias."""
        self._check_prior()
        total = 0.0
        softplus = nn.functional.softplus
        for l, (s_w, s_b) in enumerate(self.prior_scales):
            total = total + _kl_normal(self.locs[l], softplus(self.raw_scales[l]), s_w)
            total = total + _kl_normal(self.bias_locs[l], softplus(self.bias_raw_scales[l]), s_b)
        return total

    @torch.no_grad()
    def function_samples(self, x: torch.Tensor, num_samples: int = 100) -> torch.Tensor:
        """Network outputs under ``num_samples`` weight draws from ``q``: ``(S, B, outputs)``,
        computed as batched matrix products over chunks of draws."""
        if self.hmc_result is not None:
            flat = self.hmc_result.samples.flatten(0, 1)
            flat = flat[_evenly_spaced(flat.shape[0], num_samples, flat.device)]
        outs = []
        for start in range(0, num_samples, SAMPLE_CHUNK):
            s = min(SAMPLE_CHUNK, num_samples - start)
            if self.hmc_result is not None:
                draws = self._unflatten(flat[start : start + s])
            else:
                layers = range(len(self.sizes) - 1)
                draws = [tuple(q.sample((s,)) for q in self._q(l)) for l in layers]
            outs.append(self._batched_forward(x, draws))
        return torch.cat(outs)

    def _batched_forward(self, x: torch.Tensor, draws) -> torch.Tensor:
        """Network outputs ``(S, B, outputs)`` for ``S`` weight draws ``(W (S, out, in),
        b (S, out))`` per layer."""
        h = x
        for l, (w, b) in enumerate(draws):
            h = h @ w.transpose(-1, -2) + b.unsqueeze(-2)
            if l < len(self.sizes) - 2:
                h = self.activation(h)
        return h

    def _unflatten(self, theta: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Flat parameter vectors ``(S, P)`` -> ``(W (S, out, in), b (S, out))`` per layer (the
        layout of :meth:`fit_hmc`'s samples: each layer's weight, row-major, then its bias)."""
        draws, at = [], 0
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:], strict=True):
            w = theta[:, at : at + fan_out * fan_in].reshape(-1, fan_out, fan_in)
            at += fan_out * fan_in
            draws.append((w, theta[:, at : at + fan_out]))
            at += fan_out
        return draws

    @torch.no_grad()
    def log_predictive(self, x: torch.Tensor, y: torch.Tensor, num_samples: int = 100):
        """``log (1/S) sum_s p(y | x, W_s)`` per data point (in the units of ``y``)."""
        lp = self._predictive_likelihood(x, num_samples).log_prob(y)
        return torch.logsumexp(lp, 0) - math.log(num_samples)


def _kl_normal(loc: torch.Tensor, scale: torch.Tensor, prior_scale: float) -> torch.Tensor:
    """``sum KL(N(loc, scale^2) || N(0, prior_scale^2))
    = sum [log(prior_scale / scale) + (scale^2 + loc^2) / (2 prior_scale^2) - 1/2]``;
    ``prior_scale``: a float or a 0-dim tensor."""
    ratio = scale / prior_scale
    return (0.5 * (ratio.pow(2) + (loc / prior_scale).pow(2)) - ratio.log() - 0.5).sum()


def _evenly_spaced(total: int, count: int, device) -> torch.Tensor:
    """``count`` indices spread evenly over ``range(total)`` (repeating when ``count > total``)."""
    return torch.linspace(0, total - 1, count, device=device).round().long()


def _map_estimate(log_joint, theta: torch.Tensor, steps: int, lr: float = 0.01) -> torch.Tensor:
    """``argmax log_joint`` for each row of ``theta`` by ``steps`` of Adam."""
    theta = theta.clone().requires_grad_()
    optim = torch.optim.Adam([theta], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            optim.zero_grad()
            (-log_joint(theta).sum()).backward()
            optim.step()
    return theta.detach()


def interval_coverage(y: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> float:
    """Fraction of ``y`` inside ``[lower, upper]``."""
    return ((y >= lower) & (y <= upper)).double().mean().item()


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 10) -> float:
    """ECE: ``sum_b |B_b| / N * |accuracy(B_b) - confidence(B_b)|`` over confidence bins."""
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=probs.dtype)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges.tolist()):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            gap = (correct[inside].mean() - confidence[inside].double().mean()).abs()
            ece += inside.double().mean().item() * gap.item()
    return ece


class BayesianMLPELBO(TraceMeanField_ELBO):
    """``TraceMeanField_ELBO`` of a :class:`BayesianMLP`, computed without tracing.

    ``loss = (1/K) sum_k [KL(q || p) - N / B * sum_batch log p(y | x, W_k)]`` with the KL in
    closed form and the likelihood term drawn as the network's ``guide`` option says (local
    reparameterization, Flipout or weight sampling). Objective and gradient estimator are those
    of ``TraceMeanField_ELBO`` on ``bnn.model`` / ``bnn.guide``; what is skipped is Pyro's
    per-step tracing of every weight site, which dominates the step time of a small network.
    It plugs into ``SVI`` like any ELBO (tracing methods such as ``_get_trace`` are inherited);
    the ``model`` and ``guide`` handed to ``loss``/``loss_and_grads`` must be the
    network's own (they are not run, the network is), called as ``(x, y)`` or
    ``(x, y, num_data=N)``; ``num_data`` given here applies when the call has none.
    """

    def __init__(self, bnn: BayesianMLP, num_particles: int = 1, num_data: int | None = None):
        super().__init__(num_particles=num_particles)
        self.bnn, self.num_data = bnn, num_data

    def _differentiable_loss(self, x, y=None, num_data=None) -> torch.Tensor:
        num_data = self.num_data if num_data is None else num_data
        if y is None:
            raise ValueError("BayesianMLPELBO: the ELBO needs the observed targets y")
        pyro.module(self.bnn.name, self.bnn)  # SVI collects the parameters from here
        log_lik = sum(self.bnn._scaled_log_lik(x, y, num_data) for _ in range(self.num_particles))
        return self.bnn._kl() - log_lik / self.num_particles

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        return self._differentiable_loss(*args, **kwargs)

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return self._differentiable_loss(*args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self._differentiable_loss(*args, **kwargs)
        loss.backward()
        return loss.item()
