"""The registry agrees with what Pyro's ELBOs do, and explains the classic mistake."""

import inspect
from unittest import mock

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.distributions as tdist
from pyro.infer import Trace_ELBO

import pyro_reparam as pr
from pyro_reparam.distributions import (
    InverseCDF,
    Kumaraswamy,
    Rayleigh,
    Reparameterized,
    ScoreFunction,
    TruncatedNormal,
)
from pyro_reparam.families import Kind, lookup

T = torch.tensor


def _p(x):
    return T(x, requires_grad=True)


INSTANCES = {
    "normal": lambda: dist.Normal(_p(0.0), 1.0),
    "laplace": lambda: dist.Laplace(_p(0.0), 1.0),
    "student_t": lambda: dist.StudentT(_p(3.0), 0.0, 1.0),
    "logistic": lambda: dist.Logistic(_p(0.0), 1.0),
    "cauchy": lambda: dist.Cauchy(_p(0.0), 1.0),
    "rayleigh": lambda: Rayleigh(_p(1.0)),
    "pareto": lambda: dist.Pareto(_p(1.0), 2.0),
    "gamma": lambda: dist.Gamma(_p(2.0), 1.0),
    "beta": lambda: dist.Beta(_p(2.0), 2.0),
    "dirichlet": lambda: dist.Dirichlet(_p([1.0, 2.0, 3.0])),
    "lognormal": lambda: dist.LogNormal(_p(0.0), 1.0),
    "half_normal": lambda: dist.HalfNormal(_p(1.0)),
    "gumbel": lambda: dist.Gumbel(_p(0.0), 1.0),
    "weibull": lambda: dist.Weibull(_p(1.0), 2.0),
    "mvn": lambda: dist.MultivariateNormal(_p([0.0, 0.0]), torch.eye(2)),
    "kumaraswamy": lambda: Kumaraswamy(_p(2.0), 2.0),
    "truncated_normal": lambda: TruncatedNormal(_p(0.0), 1.0, -1.0, 1.0),
    "inverse_cdf": lambda: InverseCDF(dist.Exponential(_p(1.0))),
    "reparameterized": lambda: Reparameterized(
        dist.Normal(0.0, 1.0), tdist.transforms.AffineTransform(_p(0.0), 1.0)
    ),
    "relaxed_bernoulli": lambda: dist.RelaxedBernoulli(T(0.5), probs=_p(0.3)),
    "relaxed_st": lambda: dist.RelaxedBernoulliStraightThrough(T(0.5), probs=_p(0.3)),
    "relaxed_onehot": lambda: dist.RelaxedOneHotCategorical(T(0.5), probs=_p([0.2, 0.8])),
    "onehot_st": lambda: dist.OneHotCategoricalStraightThrough(probs=_p([0.2, 0.8])),
    "bernoulli": lambda: dist.Bernoulli(_p(0.3)),
    "categorical": lambda: dist.Categorical(_p([0.2, 0.3, 0.5])),
    "onehot": lambda: dist.OneHotCategorical(_p([0.2, 0.8])),
    "poisson": lambda: dist.Poisson(_p(3.0)),
    "binomial": lambda: dist.Binomial(5, _p(0.3)),
    "geometric": lambda: dist.Geometric(_p(0.3)),
    "negative_binomial": lambda: dist.NegativeBinomial(3.0, _p(0.4)),
    "von_mises": lambda: dist.VonMises(_p(0.0), 2.0),
    "delta": lambda: dist.Delta(_p(0.5)),
    "score_function_normal": lambda: ScoreFunction(dist.Normal(_p(0.0), 1.0)),
    "normal_has_rsample_false": lambda: dist.Normal(_p(0.0), 1.0).has_rsample_(False),
    "independent_normal": lambda: dist.Normal(_p([0.0, 1.0]), 1.0).to_event(1),
    "expanded_bernoulli": lambda: dist.Bernoulli(_p(0.3)).expand([3]),
    "masked_normal": lambda: dist.Normal(_p([0.0, 1.0]), 1.0).mask(T([True, False])),
    "folded_normal": lambda: dist.FoldedDistribution(dist.Normal(_p(0.5), 1.0)),
    "transformed_gamma": lambda: dist.TransformedDistribution(
        dist.Gamma(_p(2.0), 1.0), [tdist.transforms.ExpTransform()]
    ),
    "independent_categorical": lambda: dist.Categorical(_p([[0.5, 0.5], [0.1, 0.9]])).to_event(1),
    "masked_mixture": lambda: dist.MaskedMixture(
        T([True, False]), dist.Normal(_p(0.0), 1.0), dist.Poisson(3.0).expand([2])
    ),
    "rejector_gamma": lambda: _rejection_gamma("RejectionGamma"),
    "shape_augmented_gamma": lambda: _rejection_gamma("ShapeAugmentedGamma"),
}


def _rejection_gamma(name):
    from pyro.distributions.testing import rejection_gamma

    return getattr(rejection_gamma, name)(_p(2.0), T(1.0))


def _trace_elbo_adds_score_term(fn_factory) -> bool:
    """Run one Trace_ELBO gradient step; report whether it built a score-function term."""
    fn = fn_factory()

    def model():
        prior = fn_factory()
        pyro.sample("z", prior.to_event(len(prior.batch_shape)))

    def guide():
        pyro.sample("z", fn.to_event(len(fn.batch_shape)))

    calls = []
    import pyro.infer.trace_elbo as te

    real = te._compute_log_r

    def spy(*args):
        calls.append(1)
        return real(*args)

    with mock.patch.object(te, "_compute_log_r", spy):
        Trace_ELBO().differentiable_loss(model, guide)
    return bool(calls)


@pytest.mark.filterwarnings("ignore:.*not declared")
@pytest.mark.parametrize("name", sorted(INSTANCES))
def test_reparam_kind_agrees_with_trace_elbo(name):
    pyro.set_rng_seed(0)
    kind = pr.reparam_kind(INSTANCES[name]())
    adds_score = _trace_elbo_adds_score_term(INSTANCES[name])
    assert (kind is Kind.SCORE_FUNCTION) == adds_score, (name, kind)


@pytest.mark.filterwarnings("ignore:.*not declared")
def test_matrix_is_large_and_covers_every_kind():
    kinds = {pr.reparam_kind(make()) for make in INSTANCES.values()}
    assert len(INSTANCES) >= 30
    assert kinds == set(Kind)


@pytest.mark.parametrize(
    "name",
    ["normal", "laplace", "student_t", "logistic", "cauchy", "rayleigh", "pareto"],
)
def test_first_families_sample_with_gradients(name):
    d = INSTANCES[name]()
    assert pr.reparam_kind(d) in (Kind.PATHWISE, Kind.IMPLICIT)
    z = d.rsample((3,))
    assert z.requires_grad


def test_enumerable_flag():
    assert pr.reparam_info(dist.Bernoulli(0.3)).enumerable
    assert pr.reparam_info(dist.Categorical(T([0.5, 0.5])).to_event(0)).enumerable
    assert not pr.reparam_info(dist.Poisson(3.0)).enumerable
    assert not pr.reparam_info(dist.Normal(0.0, 1.0)).enumerable


def _all_distribution_classes():
    for module in (tdist, dist):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, tdist.Distribution):
                yield cls


ABSTRACT = {"Distribution", "ExponentialFamily", "TorchDistribution", "TorchDistributionMixin"}


def test_every_torch_and_pyro_family_is_declared():
    missing = []
    for cls in _all_distribution_classes():
        if cls.__name__ in ABSTRACT:
            continue
        from pyro_reparam.families import _is_wrapper_class

        if lookup(cls) is None and not _is_wrapper_class(cls):
            missing.append(cls.__name__)
    assert not missing


def test_families_table_lists_declared_families():
    table = pr.families_table()
    for name in ("torch.Normal", "pyro_reparam.Rayleigh", "torch.Bernoulli", "torch.Gamma"):
        assert name in table
    md = pr.families_table(markdown=True)
    assert md.startswith("| family | kind |")


def test_declare_as_decorator_and_undeclared_warning():
    class Shifted(dist.TorchDistribution):
        arg_constraints = {}
        support = dist.constraints.real
        has_rsample = True

        def rsample(self, sample_shape=torch.Size()):
            return torch.randn(sample_shape)

    with pytest.warns(UserWarning, match="pyro_reparam.declare"):
        assert pr.reparam_kind(Shifted()) is Kind.PATHWISE
    pr.declare(kind="implicit", note="test")(Shifted)
    assert pr.reparam_kind(Shifted()) is Kind.IMPLICIT

    with pytest.raises(ValueError, match="unknown kind"):
        pr.declare(Shifted, kind="magic")
    with pytest.raises(ValueError, match="has_rsample is False"):
        pr.declare(tdist.Bernoulli, kind="pathwise")


def test_undeclared_warning_is_given_once():
    class Quiet(dist.TorchDistribution):
        arg_constraints = {}
        support = dist.constraints.real

    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pr.reparam_kind(Quiet())
        pr.reparam_kind(Quiet())
    assert len([w for w in caught if "Quiet" in str(w.message)]) == 1


def test_require_rsample_explains_the_classic_mistake():
    q = dist.Bernoulli(T(0.3, requires_grad=True))
    with pytest.raises(pr.NotReparameterizedError) as err:
        pr.require_rsample(q, site="fc1.weight")
    msg = str(err.value)
    assert "fc1.weight" in msg
    for option in ("reparameterizable family", "relaxation", "enumeration", "baseline"):
        assert option in msg
    normal = dist.Normal(T(0.0, requires_grad=True), 1.0)
    assert pr.require_rsample(normal, site="w") is normal
    with pytest.raises(pr.NotReparameterizedError, match="score function forced"):
        pr.require_rsample(ScoreFunction(normal), site="w")


def test_rsample_carries_gradient_but_sample_does_not():
    """The Bayesian-Linear failure: weights drawn with .sample() give a loss with no gradient."""
    mu = torch.zeros(3, requires_grad=True)
    q = dist.Normal(mu, 1.0)
    loss = (q.sample() ** 2).sum()
    assert not loss.requires_grad
    loss = (pr.require_rsample(q, site="w").rsample() ** 2).sum()
    loss.backward()
    assert mu.grad is not None
