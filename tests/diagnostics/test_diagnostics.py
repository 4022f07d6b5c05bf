"""ArviZ diagnostics: the DataTree of a VI fit, VI k-hat, R-hat across restarts, netCDF."""

import math

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.importance import psis_diagnostic

import pyro_reparam as pr
from pyro_reparam.diagnostics import diagnose, pareto_khat, to_datatree, vi_khat

N = 20


def _x():
    return torch.randn(N, generator=torch.Generator().manual_seed(0)) + 1.0


def model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def _exact(x):
    var = 1 / (1 + N)
    return var * x.sum().item(), math.sqrt(var)


def _fixed_guide(loc, scale):
    def guide(x):
        pyro.sample("mu", dist.Normal(loc, scale))

    return guide


def test_conjugate_fit_datatree_matches_closed_form_and_khat_reads_it():
    x = _x()
    guide = pr.AutoReparamGuide(model)
    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.998}), Trace_ELBO())
    for _ in range(2000):
        svi.step(x)
    mean, sd = _exact(x)
    dt = to_datatree(model, guide, x, num_samples=1000)
    draws = dt.posterior["mu"].values.ravel()
    # MC error of 1000 draws (se 0.007 for the mean) plus the optimizer's last-step noise
    assert abs(draws.mean() - mean) < 0.03
    assert draws.std() == pytest.approx(sd, rel=0.1)
    assert dt.log_likelihood["x"].dims == ("chain", "draw", "data")
    assert dt.posterior_predictive["x"].shape == (1, 1000, N)
    assert dt.attrs["vi_khat"] < 0.5
    # a guide 4 times too narrow: ratios with a tail of index k = 1 - 1/16
    pyro.set_rng_seed(1)
    narrow = vi_khat(model, _fixed_guide(mean, sd / 4), x, num_particles=2000)
    assert narrow > 0.7
    exact = vi_khat(model, _fixed_guide(mean, sd), x, num_particles=2000)
    assert exact == -math.inf  # q is the posterior: every weight is log p(x)


def test_khat_agrees_with_pyros_psis_diagnostic(monkeypatch):
    """On the same log-weights (k-hat itself varies by about 0.1 between draws of 4000)."""
    import pyro.infer.importance as importance

    x = _x()
    mean, sd = _exact(x)
    for shrink in (1.6, 3.0):
        guide = _fixed_guide(mean + 0.1, sd / shrink)
        pyro.set_rng_seed(2)
        lw = pr.diagnostics.vi_log_weights(model, guide, x, num_particles=4000)
        monkeypatch.setattr(
            importance, "vectorized_importance_weights", lambda *a, lw=lw, **k: (lw, None)
        )
        theirs = psis_diagnostic(model, guide, x, num_particles=4000,
                                 max_simultaneous_particles=4000)  # fmt: skip
        ours = pr.diagnostics.pareto_khat(lw)
        assert 0.3 < ours < 1.2 and abs(ours - theirs) < 0.03, (shrink, ours, theirs)


def test_pareto_khat_shapes_and_constant_weights():
    rng = np.random.default_rng(0)
    lw = rng.standard_normal((2000, 3))
    k = pareto_khat(lw)
    assert k.shape == (3,) and (k < 0.5).all()
    heavy = np.log(rng.pareto(1.0, 4000) + 1)  # tail index 1: k near 1
    assert pareto_khat(heavy) > 0.7
    assert pareto_khat(np.zeros(100)) == -math.inf
    with pytest.raises(ValueError, match="too short a tail"):
        pareto_khat(rng.standard_normal(20))


def _fit_restart(model, x, seed, init_loc):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = pr.AutoReparamGuide(model, init_scale=0.05)
    guide(x)
    pyro.get_param_store()["AutoReparamGuide.locs.loc"] = torch.tensor(init_loc)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
    for _ in range(600):
        svi.step(x)
    loc = pyro.param("AutoReparamGuide.locs.loc").detach().clone()
    scale = pyro.param("AutoReparamGuide.locs.scale").detach().clone()

    def frozen(x):
        pyro.sample("locs", dist.Normal(loc, scale).to_event(1))

    return frozen


def mixture(x):
    """Two unit-variance components with exchangeable means: label switching."""
    locs = pyro.sample("locs", dist.Normal(torch.zeros(2), 5.0).to_event(1))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.MixtureSameFamily(dist.Categorical(torch.ones(2)),
                                                dist.Normal(locs, 1.0)), obs=x)  # fmt: skip


def test_rhat_across_restarts_flags_label_switching():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(40, generator=g) - 3, torch.randn(40, generator=g) + 3])
    same = [_fit_restart(mixture, x, s, [-3.0, 3.0]) for s in range(4)]
    switched = [_fit_restart(mixture, x, s, [-3.0, 3.0] if s % 2 else [3.0, -3.0])
                for s in range(4)]  # fmt: skip
    rhat_ok = az.rhat(to_datatree(mixture, None, x, num_samples=200, restarts=same))
    rhat_bad = az.rhat(to_datatree(mixture, None, x, num_samples=200, restarts=switched))
    assert float(rhat_ok["locs"].max()) < 1.05
    assert float(rhat_bad["locs"].min()) > 1.1


def test_diagnose_writes_summary_plots_and_a_netcdf_round_trip(tmp_path):
    x = _x()
    mean, sd = _exact(x)
    guides = [_fixed_guide(mean, sd), _fixed_guide(mean + 0.01, sd)]
    history = pr.History(records=[{"epoch": 1, "train_elbo": -30.0, "val_elbo": None}])
    dt = to_datatree(model, None, x, num_samples=300, restarts=guides, histories=[history] * 2)
    report = diagnose(dt, tmp_path)
    assert report["num_chains"] == 2 and report["vi_khat_reading"] == ["good", "good"]
    assert "r_hat" in report["summary"].columns and report["loo"].elpd < 0
    for name in ("summary.txt", "summary.csv", "posterior.png", "ppc.png", "khat.png"):
        assert (tmp_path / name).stat().st_size > 100, name
    back = az.from_netcdf(tmp_path / "datatree.nc")
    assert set(back.children) == set(dt.children)
    assert "vi_history" in back.children


def test_per_datum_khat_for_an_amortized_guide():
    def local(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def encoder(width):
        def amortized(x):
            with pyro.plate("data", len(x)):
                pyro.sample("z", dist.Normal(x / 2, width * torch.ones_like(x)))

        return amortized

    pyro.set_rng_seed(3)
    exact = vi_khat(local, encoder(math.sqrt(0.5)), _x(), num_particles=500, plate="data")
    assert exact.shape == (N,) and (exact == -math.inf).all()  # q(z | x) = p(z | x) per datum
    narrow = vi_khat(local, encoder(math.sqrt(0.5) / 4), _x(), num_particles=2000, plate="data")
    assert narrow.shape == (N,) and np.median(narrow) > 0.7  # theory: 1 - 1/16 for each datum


def test_datatree_of_a_plated_autoguide_names_inputs_after_the_signature():
    from pyro.infer.autoguide import AutoNormal

    def regression(x, y):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(w * x, 1.0), obs=y)

    x, y = torch.randn(10), torch.randn(10)
    guide = AutoNormal(regression)
    guide(x, y)
    dt = pr.to_datatree(regression, guide, x, y, num_samples=60)
    assert set(dt.posterior.data_vars) == {"w"}  # no subsample or auxiliary sites
    assert dt.constant_data["x"].dims == ("data",)
    assert dt.observed_data["y"].dims == ("data",)
    assert dt.log_likelihood["y"].dims == ("chain", "draw", "data")
