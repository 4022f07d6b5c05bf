"""pyro-reparam: reparameterization-aware variational inference for Pyro.

>>> import pyro_reparam as pr
>>> pr.reparam_kind(pyro.distributions.Bernoulli(0.3))
<Kind.SCORE_FUNCTION: 'score_function'>
"""

from pyro_reparam import (
    builtin_families,  # noqa: F401  (registers the built-in families)
    distributions,
)
from pyro_reparam.diagnostics import diagnose, to_datatree, vi_khat
from pyro_reparam.estimators import ScoreFunctionELBO
from pyro_reparam.families import (
    Family,
    Kind,
    NotReparameterizedError,
    ReparamInfo,
    declare,
    families_table,
    reparam_info,
    reparam_kind,
    require_rsample,
)
from pyro_reparam.guides import AutoReparamGuide
from pyro_reparam.measure import (
    GradientStats,
    compare_estimators,
    format_comparison,
    gradient_variance,
)
from pyro_reparam.routing import RoutingError, RoutingPlan, SiteRoute, check_elbo, route
from pyro_reparam.train import History, TrainingError, fit
from pyro_reparam.train.checkpoint import CheckpointError
from pyro_reparam.watch import SampledWithoutGradientError, watch_sampling

__version__ = "0.1.0"

__all__ = [
    "AutoReparamGuide",
    "CheckpointError",
    "Family",
    "GradientStats",
    "History",
    "Kind",
    "NotReparameterizedError",
    "ReparamInfo",
    "RoutingError",
    "RoutingPlan",
    "SampledWithoutGradientError",
    "ScoreFunctionELBO",
    "SiteRoute",
    "TrainingError",
    "check_elbo",
    "compare_estimators",
    "declare",
    "diagnose",
    "distributions",
    "families_table",
    "fit",
    "format_comparison",
    "gradient_variance",
    "reparam_info",
    "reparam_kind",
    "require_rsample",
    "route",
    "to_datatree",
    "vi_khat",
    "watch_sampling",
]
