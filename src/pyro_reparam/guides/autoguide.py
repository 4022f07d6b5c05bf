"""Guide builders that choose a reparameterizable family per latent site, discrete ones too."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import ExitStack

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import ExpandedDistribution
from pyro.distributions.transforms import biject_to
from pyro.infer.autoguide import AutoGuide
from torch import nn

from pyro_reparam.distributions import Kumaraswamy
from pyro_reparam.guides import summaries

CONTINUOUS_FAMILIES = ("normal", "laplace", "studentt", "kumaraswamy", "delta")
DISCRETE_MODES = ("score", "relaxed", "enumerate")


class AutoReparamGuide(AutoGuide):
    """A mean-field guide for models with continuous *and* discrete latent sites.

    Continuous site ``z`` with support ``S``: ``z = T(u)``, ``T = biject_to(S)``, with ``u`` from
    a location-scale family (``"normal"`` by default; ``"laplace"``, ``"studentt"``), or a family on
    ``S`` itself (``"kumaraswamy"`` on (0, 1)), or ``"delta"`` (MAP). Pick per site with
    ``families={"z": "laplace"}``.

    Discrete site (Bernoulli, Categorical, OneHotCategorical, Poisson, Binomial, Geometric):
    ``discrete="score"`` learns the same family (score-function gradients; route it with
    :func:`pyro_reparam.route`), ``"relaxed"`` samples a straight-through relaxation at
    ``temperature`` (Bernoulli, OneHotCategorical; biased), ``"enumerate"`` marks the
    site for parallel enumeration (use ``TraceEnum_ELBO``; ``route`` does).

    Parameters have each site's full batch shape; under a subsampled ``pyro.plate`` the guide
    uses the rows of the current subsample.

    Amortization (VAE-style local latents): ``encoders={"z": net}`` with ``net`` an
    ``nn.Module`` called with the model's arguments, ``net(*args, **kwargs)``, returning the
    site's parameters for the current batch: a tuple in the order of :attr:`PARAM_NAMES`
    (``(loc, scale)`` for the location-scale families, with ``scale > 0``; ``(a, b)`` for
    Kumaraswamy; ``logits`` or ``log_rate`` for discrete sites) or a dict with those keys.
    The network is registered with ``pyro.module`` as ``<guide name>.encoders.<site>``.
    """

    PARAM_NAMES = {
        "normal": ("loc", "scale"),
        "laplace": ("loc", "scale"),
        "studentt": ("loc", "scale"),
        "kumaraswamy": ("a", "b"),
        "delta": ("loc",),
        "logits": ("logits",),
        "log_rate": ("log_rate",),
    }

    def __init__(
        self,
        model: Callable,
        *,
        families: Mapping[str, str] | None = None,
        discrete: str = "score",
        temperature: float = 0.5,
        init_scale: float = 0.1,
        encoders: Mapping[str, nn.Module] | None = None,
        create_plates: Callable | None = None,
    ):
        if discrete not in DISCRETE_MODES:
            raise ValueError(
                f"AutoReparamGuide: discrete must be one of {DISCRETE_MODES}, got {discrete!r}"
            )
        for site, fam in (families or {}).items():
            if fam not in CONTINUOUS_FAMILIES:
                raise ValueError(
                    f"AutoReparamGuide: families[{site!r}]={fam!r}; choose one of "
                    f"{', '.join(CONTINUOUS_FAMILIES)}"
                )
        if not init_scale > 0:
            raise ValueError(f"AutoReparamGuide: init_scale must be > 0, got {init_scale}")
        for site, net in (encoders or {}).items():
            if not isinstance(net, nn.Module):
                raise TypeError(
                    f"AutoReparamGuide: encoders[{site!r}] must be a torch.nn.Module mapping the "
                    f"model's arguments to the site's parameters, got {type(net).__name__}"
                )
        self.families = dict(families or {})
        self.encoders = dict(encoders or {})
        self.discrete = discrete
        self.temperature = temperature
        self.init_scale = init_scale
        super().__init__(model, create_plates=create_plates)

    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        for option in ("families", "encoders"):
            unknown = set(getattr(self, option)) - set(self._sites())
            if unknown:
                raise ValueError(
                    f"AutoReparamGuide: {option} names site(s) {sorted(unknown)} that the model "
                    f"does not sample; its latent sites are {sorted(self._sites())}"
                )
        for name, site in self._sites().items():
            fn = site["fn"]
            if fn.support.is_discrete:
                self._init_discrete(name, site)
            else:
                self._init_continuous(name, site)

    def _sites(self) -> dict:
        return dict(self.prototype_trace.iter_stochastic_nodes())

    def _param(self, name, key, init, constraint=constraints.real):
        return pyro.param(f"{self._pyro_name}.{name}.{key}", init, constraint=constraint)

    @staticmethod
    def _full(init, site, event_dim):
        """Expand ``init`` to the site's full plate sizes (the prototype may be subsampled)."""
        init = init.detach()
        for frame in site["cond_indep_stack"]:
            if not frame.vectorized:
                continue
            dim = frame.dim - event_dim
            if init.dim() < -dim:
                init = init.reshape((1,) * (-dim - init.dim()) + init.shape)
            size = frame.full_size or frame.size
            if init.shape[dim] != size:
                init = init.mean(dim, keepdim=True)
                shape = list(init.shape)
                shape[dim] = size
                init = init.expand(shape)
        return init.clone()

    def _init_continuous(self, name, site):
        family = self.families.get(name, "normal")
        value = site["value"].detach()
        if family == "kumaraswamy" and site["fn"].support is not constraints.unit_interval:
            raise ValueError(
                f"AutoReparamGuide: site {name!r} has support {site['fn'].support}; "
                "kumaraswamy needs the unit interval"
            )
        if name in self.encoders:
            return
        if family == "kumaraswamy":
            ones = self._full(torch.ones_like(value), site, len(site["fn"].event_shape))
            self._param(name, "a", ones * 2.0, constraints.positive)
            self._param(name, "b", ones * 2.0, constraints.positive)
            return
        transform = biject_to(site["fn"].support)
        u = self._full(transform.inv(value), site, transform.codomain.event_dim)
        self._param(name, "loc", u)
        if family != "delta":
            self._param(name, "scale", torch.full_like(u, self.init_scale), constraints.positive)

    def _init_discrete(self, name, site):
        fn = _base(site["fn"])
        mode = self._mode(name, fn)
        if not isinstance(fn, _DISCRETE):
            raise ValueError(
                f"AutoReparamGuide: discrete site {name!r} has family {type(fn).__name__}; "
                "supported: Bernoulli, Categorical, OneHotCategorical, Poisson, Binomial, Geometric"
            )
        no_relaxation = (dist.Poisson, dist.Binomial, dist.Geometric, dist.Categorical)
        if mode == "relaxed" and isinstance(fn, no_relaxation):
            raise ValueError(
                f"AutoReparamGuide: site {name!r} ({type(fn).__name__}) has no relaxation here; "
                "use discrete='score' or 'enumerate' (a Categorical can be relaxed when the "
                "model samples it as OneHotCategorical)"
            )
        if name in self.encoders:
            return
        shape = site["fn"].batch_shape + site["fn"].event_shape
        event_dim = len(site["fn"].event_shape)
        if isinstance(fn, dist.Poisson):
            init = fn.rate.detach().log().expand(shape)
            self._param(name, "log_rate", self._full(init, site, event_dim))
        elif isinstance(fn, (dist.Categorical, dist.OneHotCategorical)):
            logits = fn.logits.detach()
            init = logits.expand(site["fn"].batch_shape + logits.shape[-1:])
            self._param(name, "logits", self._full(init, site, event_dim + 1))
        else:
            init = fn.logits.detach().expand(shape)
            self._param(name, "logits", self._full(init, site, event_dim))

    def _mode(self, name, fn):
        if self.discrete == "enumerate" and not fn.has_enumerate_support:
            return "score"
        return self.discrete

    def _param_names(self, name, site) -> tuple[str, ...]:
        fn = site["fn"]
        if not fn.support.is_discrete:
            return self.PARAM_NAMES[self.families.get(name, "normal")]
        return self.PARAM_NAMES["log_rate" if isinstance(_base(fn), dist.Poisson) else "logits"]

    def forward(self, *args, **kwargs):
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        return {
            name: pyro.sample(name, q, infer=infer)
            for name, _site, q, infer in self._site_distributions(args, kwargs)
        }

    def _site_distributions(self, args, kwargs):
        """Yield ``(name, site, q, infer)`` per latent site, inside the site's plates."""
        plates = self._create_plates(*args, **kwargs)
        for name, site in self._sites().items():
            with ExitStack() as stack:
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized:
                        stack.enter_context(plates[frame.name])
                params = self._site_params(name, site, plates, args, kwargs)
                q, infer = self._q(name, site, params)
                yield name, site, q, infer

    def _subsample(self, value, site, plates, event_dim):
        for frame in site["cond_indep_stack"]:
            full = frame.full_size or frame.size
            if frame.vectorized and full != plates[frame.name].subsample_size:
                dim = frame.dim - event_dim
                value = value.index_select(dim, plates[frame.name].indices)
        return value

    def _param_event_dim(self, name, site, key) -> int:
        """Number of trailing dims of parameter ``key`` beyond the site's batch shape."""
        fn = site["fn"]
        event_dim = len(fn.event_shape)
        if fn.support.is_discrete:
            categorical = isinstance(_base(fn), (dist.Categorical, dist.OneHotCategorical))
            return event_dim + int(categorical)
        if self.families.get(name, "normal") == "kumaraswamy":
            return event_dim
        return biject_to(fn.support).codomain.event_dim

    def _site_params(self, name, site, plates, args, kwargs) -> dict[str, torch.Tensor]:
        """The site's parameters for the current (sub)batch: encoder outputs or global params."""
        keys = self._param_names(name, site)
        if name in self.encoders:
            net = pyro.module(f"{self._pyro_name}.encoders.{name}", self.encoders[name])
            out = net(*args, **kwargs)
            if isinstance(out, torch.Tensor):
                out = (out,)
            if not isinstance(out, Mapping):
                out = tuple(out)
                if len(out) != len(keys):
                    raise ValueError(
                        f"AutoReparamGuide: encoders[{name!r}] returned {len(out)} tensor(s); "
                        f"site {name!r} needs {keys} (a tuple in this order, or a dict)"
                    )
                out = dict(zip(keys, out, strict=True))
            missing = set(keys) - set(out)
            if missing:
                raise ValueError(
                    f"AutoReparamGuide: encoders[{name!r}] returned keys {sorted(out)}; "
                    f"site {name!r} needs {keys}"
                )
            return {k: out[k] for k in keys}
        return {
            k: self._subsample(
                pyro.param(f"{self._pyro_name}.{name}.{k}"),
                site,
                plates,
                self._param_event_dim(name, site, k),
            )
            for k in keys
        }

    def _q(self, name, site, params):
        fn = site["fn"]
        event_dim = len(fn.event_shape)
        if fn.support.is_discrete:
            return self._q_discrete(name, site, params)
        family = self.families.get(name, "normal")
        if family == "kumaraswamy":
            return Kumaraswamy(params["a"], params["b"]).to_event(event_dim), {}
        transform = biject_to(fn.support)
        loc = params["loc"]
        if family == "delta":
            return dist.Delta(transform(loc), event_dim=event_dim), {}
        u_event = transform.codomain.event_dim
        base = _LOCATION_SCALE[family](loc, params["scale"]).to_event(u_event)
        if _is_real(fn.support):
            return base, {}
        return dist.TransformedDistribution(base, transform.with_cache()), {}

    def _q_discrete(self, name, site, params):
        fn = _base(site["fn"])
        event_dim = len(site["fn"].event_shape)
        mode = self._mode(name, fn)
        infer = {"enumerate": "parallel"} if mode == "enumerate" else {"estimator": mode}
        if isinstance(fn, dist.Poisson):
            return dist.Poisson(params["log_rate"].exp()).to_event(event_dim), infer
        logits = params["logits"]
        t = torch.tensor(self.temperature, dtype=logits.dtype, device=logits.device)
        if isinstance(fn, dist.Bernoulli):
            if mode == "relaxed":
                q = dist.RelaxedBernoulliStraightThrough(t, logits=logits)
                return q.to_event(event_dim), {}
            return dist.Bernoulli(logits=logits).to_event(event_dim), infer
        if isinstance(fn, dist.OneHotCategorical):
            if mode == "relaxed":
                q = dist.RelaxedOneHotCategoricalStraightThrough(t, logits=logits)
                return q.to_event(event_dim - 1), {}
            return dist.OneHotCategorical(logits=logits).to_event(event_dim - 1), infer
        if isinstance(fn, dist.Categorical):
            return dist.Categorical(logits=logits).to_event(event_dim), infer
        if isinstance(fn, dist.Binomial):
            return dist.Binomial(fn.total_count, logits=logits).to_event(event_dim), infer
        return dist.Geometric(logits=logits).to_event(event_dim), infer

    @torch.no_grad()
    def median(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """The guide's median of each latent site.

        Continuous sites: ``T(loc)`` for the location-scale families and Delta (``T`` is the
        bijection to the site's support, monotone elementwise, so medians map to medians);
        ``(1 - 2^{-1/b})^{1/a}`` for Kumaraswamy. Bernoulli sites: ``1[logits > 0]``. Sites
        whose median is not defined (Categorical, Poisson, ...) are left out. Amortized sites
        need the model's arguments.
        """
        return self._summaries(summaries.median, args, kwargs)

    @torch.no_grad()
    def quantiles(self, quantiles, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Quantiles of each continuous site with an elementwise support, shape ``(len(q),) +
        site shape``: ``T(loc + scale * F^{-1}(q))`` with ``F`` the standard base family,
        ``F^{-1}(q)`` itself for Kumaraswamy. Discrete sites are left out.
        """
        qs = torch.as_tensor(quantiles, dtype=torch.get_default_dtype())
        if qs.dim() != 1 or not ((qs > 0) & (qs < 1)).all():
            raise ValueError(
                f"AutoReparamGuide.quantiles: quantiles must be a list of numbers in (0, 1), "
                f"got {quantiles!r}"
            )
        return self._summaries(lambda q, fam: summaries.quantiles(q, fam, qs), args, kwargs)

    def _summaries(self, fn, args, kwargs):
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        if self.encoders and not (args or kwargs):
            raise ValueError(
                f"AutoReparamGuide: sites {sorted(self.encoders)} are amortized; pass the "
                "model's arguments to median()/quantiles()"
            )
        out = {}
        for name, site, q, _infer in self._site_distributions(args, kwargs):
            family = (
                "discrete" if site["fn"].support.is_discrete else self.families.get(name, "normal")
            )
            value = fn(q, family)
            if value is not None:
                out[name] = value
        return out


_LOCATION_SCALE = {
    "normal": dist.Normal,
    "laplace": dist.Laplace,
    "studentt": lambda loc, scale: dist.StudentT(4.0, loc, scale),
}

_DISCRETE = (
    dist.Bernoulli,
    dist.Categorical,
    dist.OneHotCategorical,
    dist.Poisson,
    dist.Binomial,
    dist.Geometric,
)


def _base(fn):
    """The family under Independent / expand / mask wrappers (whose parameters we learn)."""
    while isinstance(fn, (dist.Independent, dist.MaskedDistribution, ExpandedDistribution)):
        fn = fn.base_dist
    return fn


def _is_real(support) -> bool:
    """True for ``real`` and ``independent(real, n)``: no bijection is needed."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real
