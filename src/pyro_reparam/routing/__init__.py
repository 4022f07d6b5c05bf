"""Routing: which estimator each latent site gets, why, and the ELBO that implements it.

``route`` (route.py) fills a :class:`RoutingPlan` (plan.py) with the same per-site rules
(rules.py) that the routed ELBO applies later; ``build_elbo`` (build.py) is the one builder
from plan to ELBO; ``check_elbo`` (check.py) warns about ELBOs built elsewhere.
"""

from pyro_reparam.routing.build import RoutedELBO, build_elbo
from pyro_reparam.routing.check import check_elbo
from pyro_reparam.routing.plan import ESTIMATORS, RoutingPlan, RoutingRule, SiteRoute
from pyro_reparam.routing.route import route
from pyro_reparam.routing.rules import RoutingError

__all__ = [
    "ESTIMATORS",
    "RoutedELBO",
    "RoutingError",
    "RoutingPlan",
    "RoutingRule",
    "SiteRoute",
    "build_elbo",
    "check_elbo",
    "route",
]
