"""Routing: which estimator each latent site gets, why, and the ELBO that implements it."""

from pyro_reparam.routing.route import (
    ESTIMATORS,
    RoutedELBO,
    RoutingPlan,
    SiteRoute,
    check_elbo,
    route,
)

__all__ = ["ESTIMATORS", "RoutedELBO", "RoutingPlan", "SiteRoute", "check_elbo", "route"]
