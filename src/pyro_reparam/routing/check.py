"""``check_elbo``: say when an ELBO built outside the plugin applies the bare score function."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pyro.poutine as poutine
from pyro.infer import ELBO, TraceEnum_ELBO, TraceGraph_ELBO

from pyro_reparam.estimators import ScoreFunctionELBO
from pyro_reparam.families import Kind, reparam_info
from pyro_reparam.routing.build import RoutedELBO
from pyro_reparam.routing.rules import latent_sites

_CHECKED: set[tuple[int, int, str]] = set()


def check_elbo(model: Callable, guide: Callable, elbo: ELBO, *args, **kwargs) -> list[str]:
    """Warn (once per model, guide and ELBO class) when ``elbo`` would apply the bare
    score-function estimator ``E[f(z) grad log q(z)]`` to a guide site, and return the names.

    Pyro's ``Trace_ELBO`` and its relatives do so for every non-reparameterized guide site,
    silently; ``TraceGraph_ELBO`` for sites without a ``baseline`` infer dict; ``TraceEnum_ELBO``
    (DiCE) for every non-reparameterized site not marked for enumeration.
    """
    if isinstance(elbo, (ScoreFunctionELBO, RoutedELBO)):
        return []
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    bare = []
    for name, site in latent_sites(guide_trace):
        if reparam_info(site["fn"]).kind is not Kind.SCORE_FUNCTION:
            continue
        if isinstance(elbo, TraceGraph_ELBO) and site["infer"].get("baseline"):
            continue
        if isinstance(elbo, TraceEnum_ELBO) and site["infer"].get("enumerate"):
            continue
        bare.append(name)
    key = (id(model), id(guide), type(elbo).__name__)
    if bare and key not in _CHECKED:
        _CHECKED.add(key)
        how = "DiCE without a baseline" if isinstance(elbo, TraceEnum_ELBO) else "no baseline"
        warnings.warn(
            f"{type(elbo).__name__} applies the bare score-function estimator ({how}) to "
            f"site(s) {bare}: expect very noisy gradients. Use pyro_reparam.route(model, guide, "
            "*args).elbo() for baselines, leave-one-out or enumeration.",
            UserWarning,
            stacklevel=2,
        )
    return bare
