"""AutoReparamGuide: a Pyro autoguide with a family per latent site, discrete sites included."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from operator import attrgetter

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoGuide
from pyro.infer.autoguide.initialization import InitMessenger, init_to_feasible
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn.module import PyroModule
from torch import nn

from pyro_reparam.guides import calls, continuous, discrete, storage, summaries
from pyro_reparam.guides.bijections import bijection
from pyro_reparam.guides.joint import KINDS, JointGaussian, point_mass


@dataclass(frozen=True)
class _Site:
    """How the guide treats one latent site: ``kind`` is ``continuous``, ``joint`` (a site of the
    joint Gaussian) or ``discrete``; ``family`` the continuous family or the discrete mode;
    ``event_dim`` the unconstrained event dims; ``reads_model``: :func:`discrete.reads_model`."""

    kind: str
    family: str
    event_dim: int = 0
    reads_model: bool = False


class _PrototypeInit:
    """``init_loc_fn`` at continuous sites; the lowest support value at discrete ones."""

    def __init__(self, init_loc_fn: Callable):
        self.init_loc_fn = init_loc_fn

    def __call__(self, site):
        if site["fn"].support.is_discrete:
            return discrete.lowest_value(site)
        return self.init_loc_fn(site)


class AutoReparamGuide(AutoGuide):
    """A guide for models with continuous *and* discrete latent sites, kept as Pyro's
    autoguides are: ``PyroParam`` attributes (``guide.<site>.<param>``, mirrored in the param
    store as ``AutoReparamGuide.<site>.<param>``), so ``parameters()``, ``state_dict()``,
    pickling, ``requires_grad_``, ``Predictive`` and ``AutoGuideList`` work as for ``AutoNormal``.
    Two instances never share values (see :mod:`~pyro_reparam.guides.storage`).

    Continuous site ``z`` with support ``S``, ``T: R^m -> S`` the bijection: ``z = T(u)`` with
    ``u`` from a location-scale family per site, ``families={"z": "normal"|"laplace"|
    "studentt"}``, or ``"delta"`` (MAP), or ``"kumaraswamy"`` on (0, 1) (see
    :mod:`~pyro_reparam.guides.continuous`). ``u`` starts at ``T^{-1}(init_loc_fn(site))``, its
    scale at ``init_scale``. ``continuous="lowrank"`` (``rank``, default ``round(sqrt D)``) or
    ``"fullrank"`` replaces the mean-field normals of the global sites by one joint Gaussian over
    their unconstrained values (:mod:`~pyro_reparam.guides.joint`); sites with another family,
    amortized ones and sites in subsampled plates stay mean-field.

    Discrete site (Bernoulli, Categorical, OneHotCategorical, Poisson, Binomial, Geometric): the
    model's family with learned logits, ``discrete="score"|"enumerate"|"relaxed"`` (see
    :mod:`~pyro_reparam.guides.discrete`; ``temperature`` for the relaxation).
    :meth:`discrete_posterior` gives ``p(z | x)`` of the enumerable ones.

    Parameters have each site's full batch shape; under a subsampled ``pyro.plate`` the guide
    uses the rows of the current subsample (``create_plates`` as in Pyro's autoguides).

    Amortization: ``encoders={"z": net}`` (an ``nn.Module``, a submodule of the guide,
    ``encoders.z``) maps the model's arguments to the site's parameters for the current batch,
    ``net(*args, **kwargs)``: a tuple in the family's order (``(loc, scale)``, ``scale > 0``;
    ``(a, b)`` for Kumaraswamy; ``logits`` or ``log_rate``) or a dict with those keys.
    """

    def __init__(
        self,
        model: Callable,
        *,
        init_loc_fn: Callable = init_to_feasible,
        init_scale: float = 0.1,
        families: Mapping[str, str] | None = None,
        continuous: str = "meanfield",
        rank: int | None = None,
        discrete: str = "score",
        temperature: float = 0.5,
        encoders: Mapping[str, nn.Module] | None = None,
        create_plates: Callable | None = None,
    ):
        _check_options(families, continuous, rank, discrete, init_scale, encoders)
        self.init_loc_fn = init_loc_fn
        super().__init__(
            InitMessenger(_PrototypeInit(init_loc_fn))(model), create_plates=create_plates
        )
        self._raw_model = (model,)
        self._token = storage.new_token()
        self._families = dict(families or {})
        self._continuous, self._rank = continuous, rank
        self._discrete, self._temperature = discrete, temperature
        self._init_scale = float(init_scale)
        self._encoded = tuple(encoders or ())
        self._sites: dict[str, _Site] = {}
        self._joint = None
        self.encoders = PyroModule()
        for site, net in (encoders or {}).items():
            deep_setattr(self.encoders, site, net)

    def attach_model(self, model: Callable) -> None:
        """Give an unpickled guide its model back (Pyro's autoguides do not pickle it); only
        sites that read the model at each call (Binomial, masked discrete sites) need it."""
        self._model = (InitMessenger(_PrototypeInit(self.init_loc_fn))(model),)
        self._raw_model = (model,)

    def __getstate__(self):
        kept = self._model, self._raw_model, self.master
        # AutoGuide drops the model (often a closure) and the weak reference to a master
        state = dict(super().__getstate__())
        self._model, self._raw_model, self.master = kept
        state["_raw_model"] = None
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._token = storage.new_token()

    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        sites = dict(self.prototype_trace.iter_stochastic_nodes())
        for option, names in (("families", self._families), ("encoders", self._encoded)):
            unknown = set(names) - set(sites)
            if unknown:
                raise ValueError(
                    f"AutoReparamGuide: {option} names site(s) {sorted(unknown)} that the model "
                    f"does not sample; its latent sites are {sorted(sites)}"
                )
        storage.check_site_names(self, sites)
        layout, inits = [], []  # of the joint Gaussian's sites
        for name, site in sites.items():
            if site["fn"].support.is_discrete:
                self._sites[name] = self._setup_discrete(name, site)
            else:
                self._sites[name] = self._setup_continuous(name, site, layout, inits)
        if layout:
            init = torch.cat([u.reshape(-1) for u in inits])
            self._joint = JointGaussian(
                layout, init, self._continuous, self._rank, self._init_scale
            )
        storage.claim(self, self._token)

    def _setup_continuous(self, name, site, layout: list, inits: list) -> _Site:
        family = self._families.get(name, "normal")
        continuous.check(name, site, family)
        transform = bijection(site)
        value = site["value"]
        event_dim = site["fn"].event_dim + len(transform.inverse_shape(value.shape)) - value.dim()
        if self._joins(name, site, family):
            u = transform.inv(value.detach()).detach()
            layout.append((name, u.shape, event_dim))
            inits.append(u)
            return _Site("joint", family, event_dim)
        if name not in self._encoded:
            params = continuous.init_params(family, site, transform, event_dim, self._init_scale)
            self._set_params(name, site, params)
        return _Site("continuous", family, event_dim)

    def _joins(self, name, site, family) -> bool:
        """Whether the site belongs to the joint Gaussian: normal, global, not amortized."""
        subsampled = any((f.full_size or f.size) != f.size for f in site["cond_indep_stack"])
        return (
            self._continuous != "meanfield"
            and family == "normal"
            and name not in self._encoded
            and not subsampled
        )

    def _setup_discrete(self, name, site) -> _Site:
        if name in self._families:
            raise ValueError(
                f"AutoReparamGuide: families[{name!r}] is given, but site {name!r} is discrete; "
                "choose its treatment with discrete='score'|'enumerate'|'relaxed'"
            )
        mode = discrete.mode_for(site["fn"], self._discrete)
        discrete.check(name, site["fn"], mode)
        if name not in self._encoded:
            self._set_params(name, site, discrete.init_params(site))
        return _Site("discrete", mode, reads_model=discrete.reads_model(site))

    def _set_params(self, name, site, params: dict) -> None:
        for key, (init, constraint, event_dim) in params.items():
            init = storage.full_size(init, site, event_dim)
            storage.set_param(self, self._token, name, key, init, constraint, event_dim)

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Sample every latent site of the model (same ``*args, **kwargs`` as the model)."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        return self._draw(args, kwargs)

    def _draw(self, args, kwargs, skip=frozenset()) -> dict[str, torch.Tensor]:
        """Sample the sites but ``skip``; those that read the model come last, when the values
        they may depend on are known."""
        storage.reclaim(self, self._token)
        plates = self._create_plates(*args, **kwargs)
        u = {}
        if self._joint is not None:
            latent = pyro.sample(
                f"_{self._pyro_name}_latent",
                self._joint.posterior(),
                infer={"is_auxiliary": True},
            )
            u = self._joint.unpack(latent)
        values, later = {}, []
        for name, plan in self._sites.items():
            if name in skip:
                continue
            if plan.reads_model:
                later.append(name)
                continue
            fn = self.prototype_trace.nodes[name]["fn"]
            values[name] = self._sample(name, plan, fn, None, plates, args, kwargs, u)
        for name in later:
            model = self._require_model(f"site {name!r}, which reads the model at each call,")
            fn, mask = calls.model_site(model, name, values, plates, args, kwargs)
            values[name] = self._sample(name, self._sites[name], fn, mask, plates, args, kwargs, u)
        return {name: values[name] for name in self._sites if name in values}

    def _sample(self, name, plan, fn, mask, plates, args, kwargs, u):
        site = self.prototype_trace.nodes[name]
        with ExitStack() as stack:
            for frame in site["cond_indep_stack"]:
                if frame.vectorized:
                    stack.enter_context(plates[frame.name])
            if plan.kind == "joint":
                masked = poutine.get_mask() is False
                q, infer = point_mass(bijection(site), u[name], site["fn"].event_dim, masked), {}
            elif plan.kind == "discrete":
                params = self._params(name, plan, site, args, kwargs)
                q, infer = discrete.distribution(fn, params, plan.family, self._temperature)
            else:
                params = self._params(name, plan, site, args, kwargs)
                q = continuous.distribution(
                    plan.family, site, bijection(site), plan.event_dim, params
                )
                infer = {}
            if mask is not None:
                q = q.mask(mask)
            return pyro.sample(name, q, infer=infer)

    def _params(self, name, plan, site, args, kwargs) -> dict[str, torch.Tensor]:
        """The site's parameters: its ``PyroParam``\\ s (subsampled inside the site's plates) or
        its encoder's outputs for this call."""
        if plan.kind == "discrete":
            keys = discrete.param_names(site["fn"])
        else:
            keys = continuous.PARAMS[plan.family]
        if name in self._encoded:
            return calls.encoder_params(self.encoders, name, keys, args, kwargs)
        return {key: attrgetter(f"{name}.{key}")(self) for key in keys}

    def _require_model(self, what: str) -> Callable:
        if self._raw_model is None:
            raise ValueError(
                f"AutoReparamGuide: {what} needs the model, and this guide was unpickled without "
                "it (Pyro's autoguides do not pickle their model); call "
                "guide.attach_model(model) first"
            )
        return self._raw_model[0]

    @torch.no_grad()
    def median(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """The guide's median of each latent site (see :mod:`~pyro_reparam.guides.summaries`):
        ``T(loc)`` for the normal-type families, the point of a Delta, the Kumaraswamy median,
        ``1[logits > 0]`` for Bernoulli sites; other discrete sites are left out. Amortized
        sites need the model's arguments."""
        return self._summarize(args, kwargs, None)

    @torch.no_grad()
    def quantiles(self, quantiles, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Quantiles of each continuous site, shape ``(len(quantiles),) + site shape``:
        ``T(loc + scale * F^{-1}(q))`` (exact for elementwise supports; for simplex, ordered or
        matrix supports the images of the unconstrained quantiles, as ``AutoNormal``)."""
        return self._summarize(args, kwargs, summaries.check_levels(quantiles))

    def _summarize(self, args, kwargs, levels) -> dict[str, torch.Tensor]:
        """Each site's median (``levels`` None) or quantiles, from the values the store holds
        for this guide (as ``forward`` reads them)."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        if self._encoded and not (args or kwargs):
            raise ValueError(
                f"AutoReparamGuide: sites {sorted(self._encoded)} are amortized; pass the "
                "model's arguments to median()/quantiles()"
            )
        out = {}
        with self._pyro_context:
            storage.reclaim(self, self._token)
            joint = {}
            if self._joint is not None:
                scales = self._joint.unpack(self._joint.marginal_scale())
                joint = {
                    n: {"loc": u, "scale": scales[n]}
                    for n, u in self._joint.unpack(self._joint.loc).items()
                }
            for name, plan in self._sites.items():
                site = self.prototype_trace.nodes[name]
                if plan.kind == "discrete":
                    params = self._params(name, plan, site, args, kwargs)
                    value = discrete.median(site["fn"], params) if levels is None else None
                else:
                    params = joint.get(name) or self._params(name, plan, site, args, kwargs)
                    value = summaries.summary(plan.family, bijection(site), params, levels)
                if value is not None:
                    out[name] = value.detach().clone()
        return out

    @torch.no_grad()
    def discrete_posterior(self, *args, num_samples: int = 64, **kwargs) -> dict[str, torch.Tensor]:
        """``p(z = v_k | x)`` for each enumerable discrete site ``z``, shape ``batch_shape +
        (K,)`` over its support in ``enumerate_support`` order (Bernoulli: ``[P(0), P(1)]``).

        The model is enumerated at those sites given the guide's draws ``theta`` of the other
        sites (``TraceEnum_ELBO.compute_marginals``, the marginals behind Pyro's
        ``infer_discrete``), so ``p(z | x, theta)`` is exact; the result averages it over
        ``num_samples`` draws, ``E_q(theta) p(z | x, theta)`` (one draw suffices when the other
        sites are point masses).
        """
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        nodes = self.prototype_trace.nodes
        names = [
            n
            for n, plan in self._sites.items()
            if plan.kind == "discrete" and discrete.unwrap(nodes[n]["fn"]).has_enumerate_support
        ]
        if not names:
            raise ValueError(
                "AutoReparamGuide.discrete_posterior: the model has no enumerable discrete site "
                "(Bernoulli, Categorical, OneHotCategorical, Binomial)"
            )
        model = self._require_model("discrete_posterior")

        def others(*a, **k):
            with self._pyro_context:
                return self._draw(a, k, skip=frozenset(names))

        return discrete.posterior(model, others, names, num_samples, args, kwargs)


def _check_options(families, kind, rank, mode, init_scale, encoders) -> None:
    if mode not in discrete.MODES:
        raise ValueError(
            f"AutoReparamGuide: discrete must be one of {discrete.MODES}, got {mode!r}"
        )
    if kind not in KINDS:
        raise ValueError(f"AutoReparamGuide: continuous must be one of {KINDS}, got {kind!r}")
    if rank is not None and (kind != "lowrank" or not isinstance(rank, int) or rank < 1):
        raise ValueError(
            f"AutoReparamGuide: rank={rank!r} needs continuous='lowrank' and a positive integer"
        )
    for site, fam in (families or {}).items():
        if fam not in continuous.FAMILIES:
            raise ValueError(
                f"AutoReparamGuide: families[{site!r}]={fam!r}; choose one of "
                f"{', '.join(continuous.FAMILIES)}"
            )
    if isinstance(init_scale, bool) or not isinstance(init_scale, (int, float)) or init_scale <= 0:
        raise ValueError(f"AutoReparamGuide: init_scale must be a number > 0, got {init_scale!r}")
    for site, net in (encoders or {}).items():
        if not isinstance(net, nn.Module):
            raise TypeError(
                f"AutoReparamGuide: encoders[{site!r}] must be a torch.nn.Module mapping the "
                f"model's arguments to the site's parameters, got {type(net).__name__}"
            )
