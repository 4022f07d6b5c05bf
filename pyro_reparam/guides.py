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

from pyro_reparam.distributions import Kumaraswamy

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
    """

    def __init__(
        self,
        model: Callable,
        *,
        families: Mapping[str, str] | None = None,
        discrete: str = "score",
        temperature: float = 0.5,
        init_scale: float = 0.1,
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
        self.families = dict(families or {})
        self.discrete = discrete
        self.temperature = temperature
        self.init_scale = init_scale
        super().__init__(model, create_plates=create_plates)

    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        unknown = set(self.families) - set(self._sites())
        if unknown:
            raise ValueError(
                f"AutoReparamGuide: families names site(s) {sorted(unknown)} that the model does "
                f"not sample; its latent sites are {sorted(self._sites())}"
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
        if family == "kumaraswamy":
            if site["fn"].support is not constraints.unit_interval:
                raise ValueError(
                    f"AutoReparamGuide: site {name!r} has support {site['fn'].support}; "
                    "kumaraswamy needs the unit interval"
                )
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
        shape = site["fn"].batch_shape + site["fn"].event_shape
        event_dim = len(site["fn"].event_shape)
        if isinstance(fn, dist.Poisson):
            init = fn.rate.detach().log().expand(shape)
            self._param(name, "log_rate", self._full(init, site, event_dim))
        elif isinstance(fn, (dist.Categorical, dist.OneHotCategorical)):
            logits = fn.logits.detach()
            init = logits.expand(site["fn"].batch_shape + logits.shape[-1:])
            self._param(name, "logits", self._full(init, site, event_dim + 1))
        elif isinstance(fn, (dist.Bernoulli, dist.Binomial, dist.Geometric)):
            init = fn.logits.detach().expand(shape)
            self._param(name, "logits", self._full(init, site, event_dim))
        else:
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

    def _mode(self, name, fn):
        if self.discrete == "enumerate" and not fn.has_enumerate_support:
            return "score"
        return self.discrete

    def forward(self, *args, **kwargs):
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        result = {}
        for name, site in self._sites().items():
            with ExitStack() as stack:
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized:
                        stack.enter_context(plates[frame.name])
                q, infer = self._q(name, site, plates)
                result[name] = pyro.sample(name, q, infer=infer)
        return result

    def _subsample(self, value, site, plates, event_dim):
        for frame in site["cond_indep_stack"]:
            full = frame.full_size or frame.size
            if frame.vectorized and full != plates[frame.name].subsample_size:
                dim = frame.dim - event_dim
                value = value.index_select(dim, plates[frame.name].indices)
        return value

    def _get(self, name, key, site, plates, event_dim):
        value = pyro.param(f"{self._pyro_name}.{name}.{key}")
        return self._subsample(value, site, plates, event_dim)

    def _q(self, name, site, plates):
        fn = site["fn"]
        event_dim = len(fn.event_shape)
        if fn.support.is_discrete:
            return self._q_discrete(name, site, plates)
        family = self.families.get(name, "normal")
        if family == "kumaraswamy":
            a = self._get(name, "a", site, plates, event_dim)
            b = self._get(name, "b", site, plates, event_dim)
            return Kumaraswamy(a, b).to_event(event_dim), {}
        transform = biject_to(fn.support)
        loc = self._get(name, "loc", site, plates, transform.codomain.event_dim)
        u_event = loc.dim() - len(fn.batch_shape)
        if family == "delta":
            return dist.Delta(transform(loc), event_dim=event_dim), {}
        scale = self._get(name, "scale", site, plates, u_event)
        base = {
            "normal": lambda: dist.Normal(loc, scale),
            "laplace": lambda: dist.Laplace(loc, scale),
            "studentt": lambda: dist.StudentT(4.0, loc, scale),
        }[family]().to_event(u_event)
        if _is_real(fn.support):
            return base, {}
        return dist.TransformedDistribution(base, transform.with_cache()), {}

    def _q_discrete(self, name, site, plates):
        fn = _base(site["fn"])
        event_dim = len(site["fn"].event_shape)
        mode = self._mode(name, fn)
        infer = {"enumerate": "parallel"} if mode == "enumerate" else {}
        if isinstance(fn, dist.Poisson):
            rate = self._get(name, "log_rate", site, plates, event_dim).exp()
            return dist.Poisson(rate).to_event(event_dim), infer
        is_cat = isinstance(fn, (dist.Categorical, dist.OneHotCategorical))
        logits = self._get(name, "logits", site, plates, event_dim + int(is_cat))
        t = torch.tensor(self.temperature, dtype=logits.dtype, device=logits.device)
        if isinstance(fn, dist.Bernoulli):
            if mode == "relaxed":
                return dist.RelaxedBernoulliStraightThrough(t, logits=logits).to_event(
                    event_dim
                ), {}
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
