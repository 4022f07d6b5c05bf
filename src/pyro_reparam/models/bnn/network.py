"""The Bayesian MLP: its parameters, priors, generative model, mean-field guide and likelihood."""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from functools import partial

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import ELBO
from torch import nn

from pyro_reparam.infer.hmc import HMCResult
from pyro_reparam.models.bnn.elbo import HANDLERS, BayesianMLPELBO, traced_elbo
from pyro_reparam.models.bnn.export import ExportMixin
from pyro_reparam.models.bnn.fitting import FittingMixin
from pyro_reparam.models.bnn.nngp import PriorScales, fit_prior_scales
from pyro_reparam.models.bnn.prediction import PredictionMixin
from pyro_reparam.models.nets import ACTIVATIONS
from pyro_reparam.models.registration import module_params
from pyro_reparam.routing import RoutingPlan, route

TASKS = ("regression", "classification")
GUIDES = tuple(HANDLERS)  # the estimator of the likelihood term: "meanfield", "local", "flipout"
NOISE = ("homoscedastic", "heteroscedastic")
PRIORS = ("fan_in", "nngp")


def _affine(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``h W^T + b``. One weight matrix ``(out, in)`` goes through ``torch.nn.functional.linear``,
    looked up at call time so that estimator handlers act on it; weights with batch dims
    ``(..., out, in)`` (draws, chains, particles) through ``h @ W^T + b[..., None, :]``."""
    if weight.dim() == 2:
        return torch.nn.functional.linear(h, weight, bias)
    return h @ weight.transpose(-1, -2) + bias.unsqueeze(-2)


class BayesianMLP(FittingMixin, PredictionMixin, ExportMixin, nn.Module):
    """An MLP whose weights and biases are random variables, with a Gaussian mean-field guide.

    Model: ``W_l ~ N(0, s_l^2)`` elementwise with ``s_l = 1 / sqrt(fan_in)`` (``prior="fan_in"``)
    or a given scale, biases ``N(0, 1)``; or (``prior="nngp"``, ReLU regression) scales chosen
    from the data at the start of :meth:`fit` / :meth:`fit_hmc` by the exact marginal likelihood
    of the network's infinite-width limit (:func:`~pyro_reparam.models.bnn.nngp.fit_prior_scales`:
    ``W_l ~ N(0, s_w^2 / fan_in)``, ``b_l ~ N(0, s_b^2)``, output layer ``s_v``, ``s_c``;
    homoscedastic noise set to the fitted ``sigma``). ``f = MLP_W(x)``, each layer
    ``h W_l^T + b_l`` of the model's own draws. Regression: ``y ~ N(f_1(x), sigma(x)^2)`` with
    ``sigma(x) = softplus(f_2(x))`` a second output of the same network
    (``noise="heteroscedastic"``, the default), or one learned ``sigma``
    (``noise="homoscedastic"``, type-II maximum likelihood). Classification:
    ``y ~ Categorical(logits=f)``. Sites ``layer{l}.weight`` (event shape ``(out, in)``) and
    ``layer{l}.bias``, ``y`` in plate ``"data"``. The model is an honest generative model:
    ``poutine.condition``, ``Predictive``, NUTS or any ELBO see the weights it samples.

    The heteroscedastic default was chosen on validation data carved out of the training
    part of the diabetes benchmark splits (``benchmarks/bnn_defaults.py``): a single noise
    level is what mean-field BNNs overestimate when they prune units.

    Guide: ``q(W) = prod N(mu, sigma^2)``, means starting at a draw from the prior (zero biases
    would put every ReLU kink of a 1-D input at the origin). The ``guide`` option names the
    estimator of the likelihood term of the ELBO (:meth:`elbo`): ``"meanfield"`` samples
    ``W``; ``"local"`` samples each example's pre-activations (local reparameterization);
    ``"flipout"`` perturbs one draw with per-example signs. All three estimate the same ELBO,
    with the KL term in closed form; the estimator lives in the ELBO (an effect handler around
    Pyro's, or the direct :class:`~pyro_reparam.models.bnn.elbo.BayesianMLPELBO`), never in the
    model.

    Minibatches: ``model(x, y, num_data=N)`` scales the batch log-likelihood by ``N / B``, so
    ``ELBO = N / B * sum_batch log p(y | x, W) - KL(q || p)``.

    Exact posterior: :meth:`fit_hmc` samples ``p(W | data)`` itself by Hamiltonian Monte Carlo
    (all chains batched), for networks small enough to take full-data gradients. With one
    hidden layer, a factorized Gaussian cannot put much more uncertainty between two clusters
    of data than at them (Foong et al. 2019); with ``prior="nngp"``, HMC does
    (``benchmarks/bnn_gap.py``). After it, :meth:`predict` and friends use the HMC draws until
    the next :meth:`fit`.
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
        _check_options(task, guide, noise, activation, prior, hidden)
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

    # -- priors --------------------------------------------------------------------------------
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

    # -- Pyro model and guide ------------------------------------------------------------------
    def model(self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None):
        """``W_l, b_l ~ prior``, ``f = MLP_W(x)`` from these draws, ``y ~ p(y | f)`` in plate
        ``"data"`` scaled by ``num_data / B``. ``x (B, in)``; ``y (B,)`` or ``(B, outputs)``."""
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
            f = self._mean_output(self._forward(x, draws))
            return pyro.sample("y", self._likelihood(f), obs=y)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None):
        """``W_l ~ N(mu_l, sigma_l^2)``, ``b_l ~ N(m_l, s_l^2)`` elementwise, in model order."""
        pyro.module(self.name, self)
        for l in range(len(self.sizes) - 1):
            w, b = self._q(l)
            pyro.sample(f"layer{l}.weight", w)
            pyro.sample(f"layer{l}.bias", b)

    def _q_params(self, l: int) -> dict[str, torch.Tensor]:
        """Layer ``l``'s guide: ``weight_loc``, ``weight_scale`` ``(out, in)``, ``bias_loc``,
        ``bias_scale`` ``(out,)``."""
        softplus = nn.functional.softplus
        return {
            "weight_loc": self.locs[l],
            "weight_scale": softplus(self.raw_scales[l]),
            "bias_loc": self.bias_locs[l],
            "bias_scale": softplus(self.bias_raw_scales[l]),
        }

    def _q(self, l: int):
        """Layer ``l``'s guide distributions ``(q(W_l), q(b_l))``."""
        p = self._q_params(l)
        w = dist.Normal(p["weight_loc"], p["weight_scale"]).to_event(2)
        return w, dist.Normal(p["bias_loc"], p["bias_scale"]).to_event(1)

    def param_entries(self) -> list[tuple[str, torch.Tensor]]:
        """``(param-store name, tensor)`` of what ``pyro.module(self.name, self)`` registers."""
        return module_params(self.name, self)

    def elbo(self, num_particles: int = 1, *, num_data: int | None = None,
             traced: bool = False) -> ELBO:  # fmt: skip
        """The ELBO under the ``guide`` estimator: closed-form KL, Monte Carlo likelihood.

        Default: :class:`~pyro_reparam.models.bnn.elbo.BayesianMLPELBO`, computed directly
        from the module (``num_data``: the training set size for the ``N / B`` scaling when the
        model is not called with it). ``traced=True``: Pyro's ``TraceMeanField_ELBO`` on
        :meth:`model` and :meth:`guide` under the estimator's effect handler
        (:func:`~pyro_reparam.models.bnn.elbo.traced_elbo`): the same estimator through Pyro's
        tracing, slower per step."""
        if traced:
            return traced_elbo(self.guide_kind, num_particles)
        return BayesianMLPELBO(self, num_particles=num_particles, num_data=num_data)

    def route(self, x: torch.Tensor, y: torch.Tensor, **kwargs) -> RoutingPlan:
        """The routing plan of :meth:`model` / :meth:`guide` on ``(x, y)`` with the network's
        estimator (``guide="local"`` or ``"flipout"``: the linear-layer handler on every weight
        site; see :func:`pyro_reparam.route`): what :meth:`elbo` computes, as a table."""
        linear = None if self.guide_kind == "meanfield" else self.guide_kind
        return route(self.model, self.guide, x, y, linear=linear, **kwargs)

    # -- the network and its likelihood --------------------------------------------------------
    def _network(self, x: torch.Tensor, layers: Sequence[Callable[[torch.Tensor], torch.Tensor]]):
        """Raw outputs: ``layers[l]`` maps the previous activations to layer ``l``'s
        pre-activations, the activation in between."""
        h = x
        for l, layer in enumerate(layers):
            h = layer(h)
            if l < len(layers) - 1:
                h = self.activation(h)
        return h

    def _forward(self, x: torch.Tensor, draws) -> torch.Tensor:
        """Raw outputs ``(..., B, outputs)`` for weight draws ``(W (..., out, in), b (..., out))``
        per layer."""
        return self._network(x, [partial(_affine, weight=w, bias=b) for w, b in draws])

    def _mean_output(self, h: torch.Tensor) -> torch.Tensor:
        """Drop the output dim of a network with a single output (``(..., B, 1) -> (..., B)``)."""
        return h.squeeze(-1) if self.out_features == 1 and self.noise == "homoscedastic" else h

    def _likelihood(self, f, validate: bool | None = None):
        """``p(y | f)``; ``validate=False``: a regression likelihood without Pyro's argument
        and value checks (its loc is a network output, its scale positive by construction,
        and its support all reals: the direct ELBO's per-step checks that only a NaN would
        fail, which the loss then shows). Classification is always validated (labels)."""
        if self.task == "classification":
            return dist.Categorical(logits=f)
        checks = {} if validate is not False else {"validate_args": False}
        if self.noise == "heteroscedastic":
            loc = f[..., : self.out_features]
            scale = nn.functional.softplus(f[..., self.out_features :]) + 1e-3
            if self.out_features == 1:
                return dist.Normal(loc.squeeze(-1), scale.squeeze(-1), **checks)
            return dist.Normal(loc, scale, **checks).to_event(1)
        noise = self.log_noise.exp()
        if self.out_features == 1:
            return dist.Normal(f, noise, **checks)
        return dist.Normal(f, noise, **checks).to_event(1)

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

    # -- the KL term ---------------------------------------------------------------------------
    @torch.no_grad()
    def kl(self) -> float:
        """``KL(q(W) || p(W))`` in nats (closed form)."""
        return float(self._kl())

    def _kl(self, q: Sequence[dict[str, torch.Tensor]] | None = None) -> torch.Tensor:
        """Differentiable closed-form KL, summed over every weight and bias; ``q``: each
        layer's :meth:`_q_params` when the caller has them already."""
        q = [self._q_params(l) for l in range(len(self.sizes) - 1)] if q is None else q
        total = 0.0
        for p, (s_w, s_b) in zip(q, self._prior_floats(), strict=True):
            total = total + _kl_normal(p["weight_loc"], p["weight_scale"], s_w)
            total = total + _kl_normal(p["bias_loc"], p["bias_scale"], s_b)
        return total

    def _prior_floats(self) -> list[list[float]]:
        """:attr:`prior_scales` as Python floats (one host read per change of the buffer, not
        per step; refused while ``prior="nngp"`` has not seen the data)."""
        buf = self.prior_scales
        cached = getattr(self, "_prior_cache", None)
        if cached is None or cached[0]() is not buf or cached[1] != buf._version:
            self._check_prior()
            cached = self._prior_cache = (weakref.ref(buf), buf._version, buf.tolist())
        return cached[2]


def _kl_normal(loc: torch.Tensor, scale: torch.Tensor, prior_scale: float) -> torch.Tensor:
    """``sum KL(N(loc, scale^2) || N(0, prior_scale^2))
    = sum [log(prior_scale / scale) + (scale^2 + loc^2) / (2 prior_scale^2) - 1/2]``;
    ``prior_scale``: a float or a 0-dim tensor."""
    ratio = scale / prior_scale
    return (0.5 * (ratio.pow(2) + (loc / prior_scale).pow(2)) - ratio.log() - 0.5).sum()


def _check_options(task, guide, noise, activation, prior, hidden) -> None:
    """Raise a ``ValueError`` naming the first invalid constructor option."""
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
