"""`pyro-reparam train bnn` and `pyro-reparam diagnose`: outputs, user files, ArviZ on a BNN fit."""

import json

import arviz as az
import numpy as np
import pytest

from pyro_reparam.apps.bnn_job import load_table
from pyro_reparam.apps.cli import main


@pytest.fixture(scope="module")
def bnn_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bnn")
    main(["train", "bnn", "--data", "diabetes", "--epochs", "20", "--hidden", "8", "--out",
          str(out), "--quiet"])  # fmt: skip
    return out


def test_train_bnn_writes_metrics_plots_and_diagnostics(bnn_run):
    m = json.loads((bnn_run / "metrics.json").read_text())
    assert {"test_rmse", "test_nll", "coverage90"} <= set(m)
    assert len(m["kl"]) == len(m["expected_log_likelihood"]) == 20
    for name in ("elbo.png", "predictive.png", "checkpoint.pt"):
        assert (bnn_run / name).stat().st_size > 1000, name
    d = bnn_run / "diagnostics"
    for name in ("summary.csv", "posterior.png", "ppc.png", "khat.png", "datatree.nc"):
        assert (d / name).exists(), name
    assert m["diagnostics"]["vi_khat_reading"][0] in ("good", "usable", "unreliable")


def test_arviz_runs_on_the_bnn_datatree_without_reshaping(bnn_run):
    dt = az.from_netcdf(bnn_run / "diagnostics" / "datatree.nc")
    assert {"posterior", "posterior_predictive", "log_likelihood", "observed_data",
            "sample_stats"} <= set(dt.children)  # fmt: skip
    assert dt.posterior["layer1.weight"].dims == ("chain", "draw", "layer1.weight_dim_0",
                                                  "layer1.weight_dim_1")  # fmt: skip
    assert dt.log_likelihood["y"].dims == ("chain", "draw", "data")
    assert az.summary(dt).shape[0] == 18  # 2 outputs (mean, noise) x 8 weights, 2 biases
    assert np.isfinite(az.loo(dt).elpd)
    az.plot_dist(dt, var_names=["layer1.bias"])
    az.plot_ppc_dist(dt)


def test_diagnose_cli_reads_a_run(bnn_run, capsys):
    main(["diagnose", str(bnn_run)])
    out = capsys.readouterr().out
    assert "VI k-hat, chain 0" in out and "elpd" in out.lower()
    assert main(["diagnose", str(bnn_run / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyro-reparam: error: diagnose: no datatree.nc") and err.count("\n") == 1


def test_user_csv_and_npz(tmp_path):
    rows = np.random.default_rng(0).normal(size=(30, 3))
    (tmp_path / "d.csv").write_text("a,b,price\n" + "\n".join(",".join(map(str, r)) for r in rows))
    x, y, task, _ = load_table(str(tmp_path / "d.csv"), "price")
    assert x.shape == (30, 2) and task == "regression" and np.allclose(y, rows[:, 2], atol=1e-6)
    with pytest.raises(ValueError, match="no column 'cost'"):
        load_table(str(tmp_path / "d.csv"), "cost")
    np.savez(tmp_path / "d.npz", x=rows[:, :2], label=np.arange(30) % 3)
    x, y, task, _ = load_table(str(tmp_path / "d.npz"), "label")
    assert task == "classification" and y.max() == 2
    with pytest.raises(ValueError, match="needs arrays 'x' and 'y'"):
        load_table(str(tmp_path / "d.npz"))
    with pytest.raises(FileNotFoundError, match="no file"):
        load_table(str(tmp_path / "missing.csv"))


def test_train_bnn_by_hmc_with_the_nngp_prior(tmp_path, capsys):
    out = tmp_path / "hmc"
    main(["train", "bnn", "--data", "toy", "--prior", "nngp", "--inference", "hmc",
          "--hmc-samples", "30", "--hidden", "8", "--out", str(out), "--quiet"])  # fmt: skip
    m = json.loads((out / "metrics.json").read_text())
    assert m["inference"] == "hmc" and len(m["accept_rate"]) == 16
    assert m["rhat_function_median"] >= 1.0 and m["prior_scales"]["noise"] > 0
    assert (out / "hmc_samples.pt").stat().st_size > 1000
    dt = az.from_netcdf(out / "diagnostics" / "datatree.nc")
    assert dt.posterior.sizes["chain"] == 16 and dt.posterior.sizes["draw"] == 30
    assert "R-hat of the network's output" in capsys.readouterr().out
    main(["diagnose", str(out)])
    assert "elpd" in capsys.readouterr().out.lower()


def test_train_bnn_rejects_a_bad_prior(capsys):
    with pytest.raises(SystemExit):
        main(["train", "bnn", "--prior", "wide"])
    assert "expected fan_in, nngp or a positive scale" in capsys.readouterr().err
