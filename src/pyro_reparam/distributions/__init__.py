"""Reparameterizable families Pyro lacks, each declared in :mod:`pyro_reparam.families`."""

from pyro_reparam.distributions.kumaraswamy import Kumaraswamy
from pyro_reparam.distributions.rayleigh import Rayleigh
from pyro_reparam.distributions.reparameterized import InverseCDF, Reparameterized
from pyro_reparam.distributions.score_function import ScoreFunction
from pyro_reparam.distributions.truncated_normal import TruncatedNormal
from pyro_reparam.families import Kind, declare

declare(Rayleigh, Kind.PATHWISE, note="inverse CDF: z = scale * sqrt(-2 log u)")
declare(Kumaraswamy, Kind.PATHWISE, note="inverse CDF in log space: z = (1 - u^(1/b))^(1/a)")
declare(TruncatedNormal, Kind.IMPLICIT, note="log-space inverse CDF, implicit bound gradients")
declare(Reparameterized, Kind.PATHWISE, note="z = g_theta(eps), eps from fixed noise")
declare(InverseCDF, Kind.PATHWISE, note="z = base.icdf(u), u ~ U(0, 1)")
declare(ScoreFunction, Kind.SCORE_FUNCTION, note="score function forced on the wrapped family")

__all__ = [
    "InverseCDF",
    "Kumaraswamy",
    "Rayleigh",
    "Reparameterized",
    "ScoreFunction",
    "TruncatedNormal",
]
