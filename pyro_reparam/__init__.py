"""pyro-reparam: reparameterization-aware variational inference for Pyro.

>>> import pyro_reparam as pr
>>> pr.reparam_kind(pyro.distributions.Bernoulli(0.3))
<Kind.SCORE_FUNCTION: 'score_function'>
"""

from pyro_reparam import distributions
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

__version__ = "0.1.0"

__all__ = [
    "Family",
    "Kind",
    "NotReparameterizedError",
    "ReparamInfo",
    "declare",
    "distributions",
    "families_table",
    "reparam_info",
    "reparam_kind",
    "require_rsample",
]
