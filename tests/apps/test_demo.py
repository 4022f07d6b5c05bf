"""`pyro-reparam demo --quick`: the job `make demo` runs, end to end, on small sizes."""

import json

from pyro_reparam.apps.cli import main


def test_demo_quick_writes_every_part(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Routing plan" in out and "VAE on digits" in out and "BayesianMLP (local)" in out
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["plan"]["flag"] == "score"
    assert (tmp_path / "vae" / "interpolation.png").exists()
    assert (tmp_path / "bnn" / "diagnostics" / "datatree.nc").exists()
