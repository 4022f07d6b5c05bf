r"""Sticking the landing (Roeder, Wu & Duvenaud 2017): the pathwise ELBO gradient without the
score term of the entropy.

For a reparameterized guide site ``z = z(\epsilon; \phi)`` the total derivative of the
reparameterized ELBO integrand ``\log p(x, z) - \log q_\phi(z)`` is

.. math:: \frac{d}{d\phi}\big[\log p - \log q_\phi\big]
          = \frac{\partial (\log p - \log q_\phi)}{\partial z}\frac{dz}{d\phi}
          - \frac{\partial \log q_\phi(z)}{\partial \phi}\Big|_z .

The last term is a score function with expectation ``E_q[\nabla_\phi \log q_\phi(z)] = 0``:
dropping it leaves the gradient unbiased, and when ``q`` is the exact posterior the first term
vanishes for every draw (``\log p(x, z) - \log q(z) = \log p(x)`` is constant in ``z``), so the
estimator has zero variance there ("sticks the landing"); the dropped term does not vanish.

``STL_ELBO`` is a ``Trace_ELBO`` whose guide log-density at each chosen site has the
parameters stopped in the surrogate: the site's entropy term becomes
``\log q_\phi(z) - \log q_\phi(\mathrm{stop}\,z)`` (the guide run again on its detached values,
:func:`~pyro_reparam.estimators.vimco.direct_log_probs`, so for ``q(z_2 | z_1)`` the stopped
parameters are computed from ``stop z_1``: hierarchical guides are right). Everything else is
``Trace_ELBO``'s: the loss, the particles (vectorized or not), the score terms of
non-reparameterized sites.
"""

from __future__ import annotations

from collections.abc import Iterable

from pyro.distributions.score_parts import ScoreParts
from pyro.distributions.util import is_identically_zero
from pyro.infer import Trace_ELBO

from pyro_reparam.estimators.vimco import direct_log_probs, importance_traces


class STL_ELBO(Trace_ELBO):
    """``Trace_ELBO`` with the sticking-the-landing gradient at reparameterized guide sites.

    :param sites: names of the guide sites to treat so (default: every fully reparameterized
        guide site); naming a site that is not a fully reparameterized guide site raises.
    Other arguments are ``Trace_ELBO``'s.
    """

    def __init__(self, *args, sites: Iterable[str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.sites = None if sites is None else frozenset(sites)

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace, raw = importance_traces(
            model, guide, args, kwargs, self.max_plate_nesting
        )
        chosen = {
            name
            for name, site in guide_trace.nodes.items()
            if site["type"] == "sample"
            and is_identically_zero(site["score_parts"].score_function)
            and not is_identically_zero(site["score_parts"].entropy_term)
        }
        if self.sites is not None:
            bad = sorted(self.sites - chosen)
            if bad:
                raise ValueError(
                    f"STL_ELBO: sites {bad} are not fully reparameterized guide sites of this "
                    f"guide (those are {sorted(chosen)})"
                )
            chosen = self.sites
        if chosen:
            direct = direct_log_probs(guide, raw, args, kwargs)
            for name in chosen:
                site = guide_trace.nodes[name]
                parts = site["score_parts"]
                site["score_parts"] = ScoreParts(
                    parts.log_prob, parts.score_function, parts.entropy_term - direct[name]
                )
        return model_trace, guide_trace
