"""Discrete families of the guide: the model's own family, with learned logits.

Bernoulli, Binomial, Geometric: ``logits`` of the value's shape; Categorical: ``logits`` of the
value's shape plus the categories; OneHotCategorical: ``logits`` of the value's shape; Poisson:
``log_rate``. All start at the prior's and have the site's full batch shape. Modes
(``discrete=``):

* ``score``: marked ``infer={"estimator": "score"}``: the score-function gradient (route the
  pair with :func:`pyro_reparam.route` for its baselines);
* ``enumerate``: marked ``infer={"enumerate": "parallel"}``: ``TraceEnum_ELBO`` sums over the
  support (Poisson and Geometric, whose supports are infinite, stay ``score``);
* ``relaxed``: a straight-through relaxation at ``temperature`` (Bernoulli, OneHotCategorical):
  pathwise, biased.

A Binomial's ``total_count`` and a site's mask are the model's at each call: such a site
:func:`reads_model`, and the guide asks the model for the site's distribution every time.
"""

from __future__ import annotations

import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.infer import TraceEnum_ELBO

MODES = ("score", "relaxed", "enumerate")
FAMILIES = (
    dist.Bernoulli,
    dist.Categorical,
    dist.OneHotCategorical,
    dist.Poisson,
    dist.Binomial,
    dist.Geometric,
)
_WRAPPERS = (dist.Independent, MaskedDistribution, ExpandedDistribution)
_RELAXABLE = (dist.Bernoulli, dist.OneHotCategorical)


def unwrap(fn):
    """The family under ``Independent`` / ``.expand`` / ``.mask`` (whose parameters we learn)."""
    while isinstance(fn, _WRAPPERS):
        fn = fn.base_dist
    return fn


def check(name: str, fn, mode: str) -> None:
    """Refuse a family or mode the guide has no discrete family for."""
    base = unwrap(fn)
    if not isinstance(base, FAMILIES):
        raise ValueError(
            f"AutoReparamGuide: discrete site {name!r} has family {type(base).__name__}; "
            "supported: Bernoulli, Categorical, OneHotCategorical, Poisson, Binomial, Geometric "
            f"(hide {name!r} from this guide with poutine.block and guide it yourself)"
        )
    if mode == "relaxed" and not isinstance(base, _RELAXABLE):
        raise ValueError(
            f"AutoReparamGuide: site {name!r} ({type(base).__name__}) has no relaxation here; "
            "use discrete='score' or 'enumerate' (a Categorical can be relaxed when the "
            "model samples it as OneHotCategorical)"
        )


def mode_for(fn, mode: str) -> str:
    """``mode``, except ``score`` for a family that cannot be enumerated."""
    return "score" if mode == "enumerate" and not unwrap(fn).has_enumerate_support else mode


def mask_of(fn, mask):
    """The site's batch mask: ``poutine.mask``'s (``mask``) and a ``.mask()`` above any
    ``Independent`` (masks inside an event stay the model's business); ``None`` when unmasked."""
    while isinstance(fn, (MaskedDistribution, ExpandedDistribution)):
        if isinstance(fn, MaskedDistribution):
            mask = fn._mask if mask is None else mask & fn._mask
        fn = fn.base_dist
    return mask


def reads_model(site: dict) -> bool:
    """True when the site's distribution may change between calls in a way the guide must
    follow: a Binomial (``total_count``) or a masked site."""
    fn = site["fn"]
    return isinstance(unwrap(fn), dist.Binomial) or mask_of(fn, site["mask"]) is not None


def param_names(fn) -> tuple[str, ...]:
    return ("log_rate",) if isinstance(unwrap(fn), dist.Poisson) else ("logits",)


def init_params(site: dict) -> dict:
    """``{key: (initial value, constraint, event_dim)}``: the prior's logits (log-rate)."""
    fn = site["fn"]
    base = unwrap(fn)
    shape = fn.batch_shape + fn.event_shape
    if isinstance(base, dist.Poisson):
        return {
            "log_rate": (base.rate.detach().log().expand(shape), constraints.real, fn.event_dim)
        }
    if isinstance(base, dist.Categorical):
        logits = base.logits.detach()
        init = logits.expand(shape + logits.shape[-1:])
        return {"logits": (init, constraints.real, fn.event_dim + 1)}
    return {"logits": (base.logits.detach().expand(shape), constraints.real, fn.event_dim)}


def distribution(fn, params: dict, mode: str, temperature: float):
    """``(q, infer)`` for a site whose model distribution at this call is ``fn``."""
    base = unwrap(fn)
    event_dim = fn.event_dim
    infer = {"enumerate": "parallel"} if mode == "enumerate" else {"estimator": mode}
    if isinstance(base, dist.Poisson):
        return dist.Poisson(params["log_rate"].exp()).to_event(event_dim), infer
    logits = params["logits"]
    if isinstance(base, dist.Bernoulli):
        if mode == "relaxed":
            q = dist.RelaxedBernoulliStraightThrough(logits.new_tensor(temperature), logits=logits)
            return q.to_event(event_dim), {}
        return dist.Bernoulli(logits=logits).to_event(event_dim), infer
    if isinstance(base, dist.OneHotCategorical):
        if mode == "relaxed":
            t = logits.new_tensor(temperature)
            q = dist.RelaxedOneHotCategoricalStraightThrough(t, logits=logits)
            return q.to_event(event_dim - 1), {}
        return dist.OneHotCategorical(logits=logits).to_event(event_dim - 1), infer
    if isinstance(base, dist.Categorical):
        return dist.Categorical(logits=logits).to_event(event_dim), infer
    if isinstance(base, dist.Binomial):
        return dist.Binomial(base.total_count, logits=logits).to_event(event_dim), infer
    return dist.Geometric(logits=logits).to_event(event_dim), infer


def median(fn, params: dict) -> torch.Tensor | None:
    """Bernoulli: ``1[logits > 0]``; ``None`` for the families whose median is not given here."""
    if not isinstance(unwrap(fn), dist.Bernoulli):
        return None
    return (params["logits"] > 0).to(params["logits"].dtype)


def lowest_value(site: dict) -> torch.Tensor:
    """The smallest value of the support, of the site's shape: the prototype trace's value of a
    discrete site (drawn from no random stream)."""
    fn = site["fn"]
    check(site["name"], fn, "score")
    base = unwrap(fn)
    if isinstance(base, (dist.Categorical, dist.OneHotCategorical)):
        return base.enumerate_support(expand=False)[0].expand(fn.shape()).clone()
    return base.mean.new_zeros(fn.shape())


def support_probs(marginal) -> torch.Tensor:
    """``P(z = v_k)`` over the support ``v_1..v_K`` (``enumerate_support`` order), shape
    ``batch_shape + (K,)``."""
    support = marginal.enumerate_support(expand=False)
    return marginal.log_prob(support).exp().movedim(0, -1)


def posterior(model, others, names, num_samples: int, args, kwargs) -> dict[str, torch.Tensor]:
    """``E_q(theta) p(z = v_k | x, theta)`` for the sites ``names``: ``model`` enumerated at
    them (``TraceEnum_ELBO.compute_marginals``) given draws ``theta`` of the guide ``others``
    (the guide without those sites), averaged over ``num_samples`` draws."""
    enumerated = poutine.infer_config(
        model, lambda msg: {"enumerate": "parallel"} if msg["name"] in names else {}
    )
    elbo = TraceEnum_ELBO()
    total = dict.fromkeys(names, 0.0)
    for _ in range(num_samples):
        marginals = elbo.compute_marginals(enumerated, others, *args, **kwargs)
        for name in names:
            total[name] = total[name] + support_probs(marginals[name])
    return {name: p / num_samples for name, p in total.items()}
