"""AutoReparamGuide fits a mixed continuous/discrete model to its exact posterior."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Predictive
from pyro.optim import ClippedAdam

import pyro_reparam as pr

N = 12
PRIOR_Z = 0.4
SHIFT = 4.0


def _data():
    g = torch.Generator().manual_seed(3)
    return torch.randn(N, generator=g) + 0.3 + SHIFT  # generated with z = 1, mu = 0.3


def model(x):
    z = pyro.sample("z", dist.Bernoulli(PRIOR_Z))
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu + SHIFT * z, 1.0), obs=x)


def exact_posterior(x):
    """p(z | x) and the moments of p(mu | x, z) (Normal-Normal conjugacy)."""
    post = {}
    log_w = []
    for z in (0.0, 1.0):
        r = x - SHIFT * z
        var = 1.0 / (1.0 + N)
        mean = var * r.sum().item()
        # log marginal likelihood of r under mu ~ N(0, 1), r_i ~ N(mu, 1)
        cov = torch.eye(N) + torch.ones(N, N)
        lml = dist.MultivariateNormal(torch.zeros(N), cov).log_prob(r).item()
        prior = math.log(PRIOR_Z if z else 1 - PRIOR_Z)
        log_w.append(lml + prior)
        post[z] = (mean, math.sqrt(var))
    p1 = 1 / (1 + math.exp(log_w[0] - log_w[1]))
    return p1, post


@pytest.mark.parametrize("discrete", ["enumerate", "score"])
def test_fits_exact_posterior(discrete):
    pyro.set_rng_seed(0)
    x = _data()
    guide = pr.AutoReparamGuide(model, discrete=discrete)
    plan = pr.route(model, guide, x, enumerate="auto" if discrete == "enumerate" else "never")
    assert plan["z"].estimator == ("enumerate" if discrete == "enumerate" else "score")
    assert plan["mu"].estimator == "pathwise"
    svi = SVI(model, guide, ClippedAdam({"lr": 0.05, "lrd": 0.997}), plan.elbo())
    for _ in range(1500):
        svi.step(x)
    p1, post = exact_posterior(x)
    assert p1 > 0.95  # the data clearly come from z = 1: mean-field is then near-exact
    q_logit = pyro.param("AutoReparamGuide.z.logits").item()
    q1 = 1 / (1 + math.exp(-q_logit))
    assert abs(q1 - p1) < 0.03
    mean, sd = post[1.0]
    assert abs(pyro.param("AutoReparamGuide.mu.loc").item() - mean) < 0.1
    assert pyro.param("AutoReparamGuide.mu.scale").item() == pytest.approx(sd, rel=0.2)


def test_predictive_and_families():
    x = _data()
    guide = pr.AutoReparamGuide(model, families={"mu": "laplace"})
    guide(x)
    draws = Predictive(model, guide=guide, num_samples=20)(x)
    assert draws["z"].shape[0] == 20 and draws["mu"].shape[0] == 20
    with pytest.raises(ValueError, match="does not sample"):
        pr.AutoReparamGuide(model, families={"nope": "normal"})(x)
    with pytest.raises(ValueError, match="choose one of"):
        pr.AutoReparamGuide(model, families={"mu": "cauchy"})
    with pytest.raises(ValueError, match="discrete must be"):
        pr.AutoReparamGuide(model, discrete="magic")


def test_relaxed_bernoulli_is_pathwise_and_biased():
    x = _data()
    guide = pr.AutoReparamGuide(model, discrete="relaxed")
    plan = pr.route(model, guide, x)
    assert plan["z"].estimator == "relaxed" and plan["z"].biased


def test_constrained_and_plated_sites():
    def m(x):
        s = pyro.sample("s", dist.Gamma(2.0, 2.0))
        p = pyro.sample("p", dist.Beta(2.0, 2.0))
        with pyro.plate("data", len(x), subsample_size=4):
            c = pyro.sample("c", dist.Poisson(3.0))
            pyro.sample("obs", dist.Normal(c * p, s), obs=x[:4])

    x = torch.arange(10.0)
    guide = pr.AutoReparamGuide(m, families={"p": "kumaraswamy"})
    tr = pyro.poutine.trace(guide).get_trace(x)
    assert tr.nodes["s"]["value"] > 0
    assert 0 < tr.nodes["p"]["value"] < 1
    assert tr.nodes["c"]["value"].shape == (4,)
    assert pyro.param("AutoReparamGuide.c.log_rate").shape == (10,)


def test_vector_valued_constrained_site_stays_in_its_support():
    """A site with support independent(positive, 1) must go through its bijection."""

    def m():
        pyro.sample("rates", dist.Gamma(torch.ones(3), 1.0).to_event(1))

    guide = pr.AutoReparamGuide(m)
    guide()
    pyro.get_param_store()["AutoReparamGuide.rates.loc"] = torch.full((3,), -5.0)
    value = pyro.poutine.trace(guide).get_trace().nodes["rates"]["value"]
    assert value.shape == (3,) and (value > 0).all()


def test_median_and_quantiles_match_closed_forms():
    def m():
        pyro.sample("s", dist.LogNormal(0.0, 1.0))
        pyro.sample("p", dist.Beta(2.0, 2.0))
        pyro.sample("t", dist.Normal(0.0, 1.0))
        pyro.sample("b", dist.Bernoulli(0.5))
        pyro.sample("k", dist.Poisson(2.0))

    guide = pr.AutoReparamGuide(m, families={"p": "kumaraswamy", "t": "laplace"})
    guide()
    store = pyro.get_param_store()
    store["AutoReparamGuide.s.loc"] = torch.tensor(0.7)
    store["AutoReparamGuide.s.scale"] = torch.tensor(0.3)
    store["AutoReparamGuide.p.a"] = torch.tensor(2.0)
    store["AutoReparamGuide.p.b"] = torch.tensor(3.0)
    store["AutoReparamGuide.t.loc"] = torch.tensor(1.0)
    store["AutoReparamGuide.t.scale"] = torch.tensor(2.0)
    store["AutoReparamGuide.b.logits"] = torch.tensor(0.4)
    med = guide.median()
    assert set(med) == {"s", "p", "t", "b"}  # a Poisson has no median here
    assert med["s"].item() == pytest.approx(math.exp(0.7), rel=1e-5)
    assert med["p"].item() == pytest.approx((1 - 0.5 ** (1 / 3)) ** 0.5, rel=1e-5)
    assert med["t"].item() == pytest.approx(1.0) and med["b"].item() == 1.0
    q = guide.quantiles([0.1, 0.5, 0.9])
    assert set(q) == {"s", "p", "t"}
    z = dist.Normal(0.0, 1.0).icdf(torch.tensor([0.1, 0.5, 0.9]))
    assert torch.allclose(q["s"], torch.exp(0.7 + 0.3 * z), rtol=1e-5)
    laplace = torch.tensor([math.log(0.2), 0.0, -math.log(0.2)])
    assert torch.allclose(q["t"], 1.0 + 2.0 * laplace, rtol=1e-5)
    # Kumaraswamy quantiles invert its CDF 1 - (1 - x^a)^b
    cdf = 1 - (1 - q["p"] ** 2.0) ** 3.0
    assert torch.allclose(cdf, torch.tensor([0.1, 0.5, 0.9]), atol=1e-5)
    # empirical check: draws from the guide fall below the quantiles at the stated rates
    draws = Predictive(m, guide=guide, num_samples=4000)()
    for site in ("s", "p", "t"):
        frac = (draws[site].reshape(-1, 1) < q[site]).float().mean(0)
        se = torch.sqrt(torch.tensor([0.09, 0.25, 0.09]) / 4000)
        assert ((frac - torch.tensor([0.1, 0.5, 0.9])).abs() < 4 * se).all(), site
    with pytest.raises(ValueError, match="quantiles must be"):
        guide.quantiles([0.5, 1.5])


class _Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)
        self.log_scale = torch.nn.Parameter(torch.tensor(0.0))

    def forward(self, x):
        return self.linear(x.unsqueeze(-1)).squeeze(-1), self.log_scale.exp().expand(x.shape)


def test_amortized_encoder_learns_the_exact_local_posterior():
    """z_n ~ N(0, 1), x_n ~ N(z_n, 1): q(z_n | x_n) = N(x_n / 2, 1 / sqrt 2) is exact."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, generator=g) * math.sqrt(2.0)

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    encoder = _Encoder()
    guide = pr.AutoReparamGuide(model, encoders={"z": encoder})
    svi = SVI(model, guide, ClippedAdam({"lr": 0.03}), pr.route(model, guide, x).elbo())
    for _ in range(800):
        svi.step(x)
    assert encoder.linear.weight.item() == pytest.approx(0.5, abs=0.05)
    assert encoder.linear.bias.item() == pytest.approx(0.0, abs=0.05)
    assert encoder.log_scale.exp().item() == pytest.approx(math.sqrt(0.5), rel=0.08)
    assert "AutoReparamGuide.encoders.z$$$linear.weight" in pyro.get_param_store()
    assert not any(k.startswith("AutoReparamGuide.z.") for k in pyro.get_param_store())
    med = guide.median(x[:3])
    assert torch.allclose(med["z"], encoder.linear(x[:3, None]).squeeze(-1).detach())
    with pytest.raises(ValueError, match="pass the model's arguments"):
        guide.median()


def test_encoder_errors_name_the_site():
    x = torch.randn(8)

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    with pytest.raises(TypeError, match=r"encoders\['z'\] must be a torch.nn.Module"):
        pr.AutoReparamGuide(model, encoders={"z": lambda x: x})
    one = torch.nn.Linear(1, 1)
    guide = pr.AutoReparamGuide(model, encoders={"z": torch.nn.Sequential()})
    with pytest.raises(ValueError, match=r"returned 1 tensor\(s\); site 'z' needs"):
        guide(x)
    with pytest.raises(ValueError, match="encoders names site"):
        pr.AutoReparamGuide(model, encoders={"w": one})(x)


def test_route_honours_discrete_score():
    def m():
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Bernoulli(0.3))
            pyro.sample("x", dist.Normal(z, 1.0), obs=torch.zeros(3))

    enumerated = pr.route(m, pr.AutoReparamGuide(m, discrete="enumerate"))
    assert enumerated["z"].estimator == "enumerate"
    pyro.clear_param_store()
    scored = pr.route(m, pr.AutoReparamGuide(m, discrete="score"))
    assert scored["z"].estimator == "score" and scored.elbo_class == "ScoreFunctionELBO"
