"""The reparameterization kind of every torch and Pyro distribution family, declared once.

Registered when ``pyro_reparam`` is imported; :func:`pyro_reparam.declare` adds or overrides
entries.
"""

import pyro.distributions as pdist
import torch.distributions as tdist
from pyro.distributions.testing import rejection_gamma
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution

from pyro_reparam.families import Family, Kind, declare_delegate, register_family

_LOC_SCALE = "location-scale: z = loc + scale * eps"

# reparameterized: z = g(params, eps), eps from fixed noise
_PATHWISE = (
    (tdist.Normal, _LOC_SCALE),
    (tdist.Laplace, _LOC_SCALE + ", eps ~ Laplace(0, 1) by inverse CDF"),
    (tdist.Cauchy, _LOC_SCALE + ", eps = tan(pi (u - 1/2))"),
    (pdist.Logistic, _LOC_SCALE + ", eps = logit(u)"),
    (pdist.SkewLogistic, "inverse CDF"),
    (tdist.Gumbel, _LOC_SCALE + ", eps = -log(-log u)"),
    (tdist.Uniform, "z = low + (high - low) * u"),
    (tdist.Exponential, "inverse CDF: z = -log(u) / rate"),
    (tdist.LogNormal, "z = exp(loc + scale * eps)"),
    (tdist.HalfNormal, "z = scale * |eps|"),
    (tdist.HalfCauchy, "z = scale * |eps|, eps ~ Cauchy"),
    (tdist.Pareto, "z = scale * exp(E / alpha), E ~ Exponential(1)"),
    (tdist.Weibull, "inverse CDF"),
    (tdist.GeneralizedPareto, "inverse CDF"),
    (tdist.LogisticNormal, "stick-breaking transform of a Normal"),
    (tdist.MultivariateNormal, "z = loc + L eps"),
    (tdist.LowRankMultivariateNormal, "z = loc + W eps1 + sqrt(D) eps2"),
    (tdist.ContinuousBernoulli, "inverse CDF"),
    (tdist.Kumaraswamy, "inverse CDF: z = (1 - u^(1/b))^(1/a)"),
    (pdist.AsymmetricLaplace, "inverse CDF"),
    (pdist.SoftAsymmetricLaplace, "sum of location-scale noises"),
    (pdist.SoftLaplace, "inverse CDF"),
    (pdist.Delta, "point mass: z = v(params), differentiable"),
    (pdist.AVFMultivariateNormal, "z = loc + L eps with an adaptive control variate"),
    (pdist.OMTMultivariateNormal, "optimal-transport pathwise gradient"),
    (pdist.ProjectedNormal, "z = x / |x|, x ~ Normal"),
    (pdist.Stable, "Chambers-Mallows-Stuck: z = g(alpha, beta; u, e)"),
    (pdist.GaussianHMM, "Gaussian forward filtering, backward sampling"),
    (pdist.LinearHMM, "pathwise through its Normal noises"),
)

# implicit reparameterization gradients (Figurnov et al. 2018)
_IMPLICIT = (
    (tdist.Gamma, "implicit gradient of the Gamma CDF"),
    (tdist.Chi2, "Gamma(df / 2, 1 / 2): implicit"),
    (tdist.Beta, "Dirichlet of two: implicit"),
    (tdist.Dirichlet, "normalized Gammas: implicit"),
    (tdist.InverseGamma, "1 / Gamma: implicit"),
    (tdist.StudentT, _LOC_SCALE + "; df through implicit Gamma gradients"),
    (tdist.FisherSnedecor, "ratio of Chi2s: implicit"),
    (tdist.Wishart, "Bartlett decomposition with Chi2s: implicit"),
    (pdist.MultivariateStudentT, "z = loc + L eps / sqrt(Chi2 / df): implicit"),
    (pdist.AffineBeta, "affine map of a Beta: implicit"),
    (pdist.GaussianScaleMixture, "implicit gradient of the mixture CDF"),
    (pdist.MixtureOfDiagNormals, "implicit gradient of the mixture CDF"),
    (pdist.MixtureOfDiagNormalsSharedCovariance, "implicit gradient of the mixture CDF"),
)

# continuous relaxations of discrete families (biased)
_RELAXED = (
    (tdist.RelaxedBernoulli, "Concrete / binary Gumbel-softmax relaxation"),
    (tdist.RelaxedOneHotCategorical, "Concrete / Gumbel-softmax relaxation"),
    (pdist.RelaxedBernoulliStraightThrough, "hard forward value, relaxed backward"),
    (pdist.RelaxedOneHotCategoricalStraightThrough, "hard forward value, relaxed backward"),
    (tdist.OneHotCategoricalStraightThrough, "straight-through: biased surrogate gradient"),
)

# no pathwise derivative: score function, enumeration or relaxation
_SCORE_FUNCTION = (
    (tdist.Bernoulli, "discrete"),
    (tdist.Binomial, "discrete"),
    (tdist.Categorical, "discrete"),
    (tdist.OneHotCategorical, "discrete"),
    (tdist.Geometric, "discrete, infinite support"),
    (tdist.Poisson, "discrete, infinite support"),
    (tdist.NegativeBinomial, "discrete, infinite support"),
    (tdist.Multinomial, "discrete"),
    (tdist.MixtureSameFamily, "discrete component choice"),
    (tdist.VonMises, "rejection sampler without a pathwise derivative"),
    (tdist.LKJCholesky, "onion-method sampler without a pathwise derivative"),
    (pdist.BetaBinomial, "discrete"),
    (pdist.DirichletMultinomial, "discrete"),
    (pdist.GammaPoisson, "discrete, infinite support"),
    (pdist.OrderedLogistic, "discrete"),
    (pdist.Empirical, "draws from stored samples"),
    (pdist.OneOneMatching, "discrete"),
    (pdist.OneTwoMatching, "discrete"),
    (pdist.SpanningTree, "discrete"),
    (pdist.ZeroInflatedDistribution, "discrete gate"),
    (pdist.LogNormalNegativeBinomial, "discrete"),
    (pdist.TruncatedPolyaGamma, "series sampler without a pathwise derivative"),
    (pdist.CoalescentTimes, "no sampler with gradients"),
    (pdist.CoalescentTimesWithRate, "no sampler with gradients"),
    (pdist.SineBivariateVonMises, "rejection sampler"),
    (pdist.SineSkewed, "no pathwise sampler"),
    (pdist.VonMises3D, "no pathwise sampler"),
    (pdist.GroupedNormalNormal, "no sampler"),
    (pdist.GaussianMRF, "no sampler"),
    (pdist.DiscreteHMM, "discrete hidden states"),
    (pdist.GammaGaussianHMM, "no pathwise sampler"),
    (pdist.ImproperUniform, "cannot be sampled: use it in models only"),
    (pdist.Unit, "a factor with no sample"),
    (pdist.Rejector, "rsample plus a score-function correction for the acceptance step"),
    (rejection_gamma.RejectionGamma, "rejection sampler with a score term for the accept step"),
    (rejection_gamma.ShapeAugmentedGamma, "shape-augmented rejection sampler with a score term"),
)


def declare_builtin() -> None:
    """Register the torch and Pyro families above and the wrappers that delegate."""
    tables = (
        (Kind.PATHWISE, _PATHWISE),
        (Kind.IMPLICIT, _IMPLICIT),
        (Kind.RELAXED, _RELAXED),
        (Kind.SCORE_FUNCTION, _SCORE_FUNCTION),
    )
    for kind, entries in tables:
        for cls, note in entries:
            register_family(Family(cls, kind, note))

    def base(fn):
        return [fn.base_dist]

    for wrapper in (
        tdist.Independent,
        tdist.TransformedDistribution,
        ExpandedDistribution,
        MaskedDistribution,
        pdist.IndependentHMM,
    ):
        declare_delegate(wrapper, base)
    declare_delegate(pdist.MaskedMixture, lambda fn: [fn.component0, fn.component1])


declare_builtin()
