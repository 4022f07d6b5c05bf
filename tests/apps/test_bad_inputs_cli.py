"""Bad command lines: every row is refused in one line naming the argument (exit status 2)."""

import pytest

from pyro_reparam.apps.cli import main

PARSE_ERRORS = [
    (["train", "vae", "--epochs", "0"], "--epochs"),
    (["train", "vae", "--epochs", "-3"], "--epochs"),
    (["train", "vae", "--epochs", "1.5"], "--epochs"),
    (["train", "vae", "--epochs", "ten"], "--epochs"),
    (["train", "vae", "--batch-size", "0"], "--batch-size"),
    (["train", "vae", "--lr", "0"], "--lr"),
    (["train", "vae", "--lr", "-1e-3"], "--lr"),
    (["train", "vae", "--lr", "inf"], "--lr"),
    (["train", "vae", "--lr", "fast"], "--lr"),
    (["train", "vae", "--lr", "5"], "--lr"),
    (["train", "vae", "--latent-dim", "0"], "--latent-dim"),
    (["train", "vae", "--hidden", "0"], "--hidden"),
    (["train", "vae", "--iw-samples", "0"], "--iw-samples"),
    (["train", "vae", "--likelihood", "poisson"], "--likelihood"),
    (["train", "vae", "--estimator", "exact"], "--estimator"),
    (["train", "vae", "--iwae", "0"], "--iwae"),
    (["train", "vae", "--seed", "x"], "--seed"),
    (["train", "vae", "--threads", "-1"], "--threads"),
    (["train", "dvae", "--latent", "gaussian"], "--latent"),
    (["train", "dvae", "--num-latents", "0"], "--num-latents"),
    (["train", "dvae", "--num-categories", "0"], "--num-categories"),
    (["train", "dvae", "--estimator", "reinforce"], "--estimator"),
    (["train", "dvae", "--temperature", "-1"], "--temperature"),
    (["train", "dvae", "--temperature", "nan"], "--temperature"),
    (["train", "dvae", "--hidden", "-5"], "--hidden"),
    (["train", "bnn", "--task", "ranking"], "--task"),
    (["train", "bnn", "--guide", "laplace"], "--guide"),
    (["train", "bnn", "--prior", "wide"], "--prior"),
    (["train", "bnn", "--prior", "-2"], "--prior"),
    (["train", "bnn", "--inference", "nuts"], "--inference"),
    (["train", "bnn", "--hmc-samples", "0"], "--hmc-samples"),
    (["train", "bnn", "--hidden", "50", "0"], "--hidden"),
    (["train", "bnn", "--epochs", "0"], "--epochs"),
    (["train", "bnn", "--batch-size", "-1"], "--batch-size"),
    (["train", "bnn", "--lr", "-0.5"], "--lr"),
    (["train", "bnn", "--lr", "1e6"], "--lr"),
    (["families", "--kind", "magic"], "--kind"),
    (["train", "vae", "--resume", "--overwrite"], "--overwrite"),
]


@pytest.mark.parametrize(("argv", "flag"), PARSE_ERRORS, ids=[" ".join(a) for a, _ in PARSE_ERRORS])
def test_argument_errors_name_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert flag in err and "error:" in err


def _bad_files(tmp):
    (tmp / "empty.csv").write_text("")
    (tmp / "header.csv").write_text("a,b\n")
    (tmp / "ragged.csv").write_text("a,b\n1,2\n3\n")
    (tmp / "words.csv").write_text("a,b\n1,x\n")
    (tmp / "noise.npz").write_bytes(b"not an archive at all")
    (tmp / "data.txt").write_text("1 2 3\n")
    return {
        "empty": ["train", "bnn", "--data", str(tmp / "empty.csv")],
        "header only": ["train", "bnn", "--data", str(tmp / "header.csv")],
        "ragged": ["train", "bnn", "--data", str(tmp / "ragged.csv")],
        "non-numeric": ["train", "bnn", "--data", str(tmp / "words.csv")],
        "missing file": ["train", "bnn", "--data", str(tmp / "nowhere.csv")],
        "not csv/npz": ["train", "bnn", "--data", str(tmp / "data.txt")],
        "bad target": ["train", "bnn", "--data", "diabetes", "--target", "price"],
        "random npz images": ["train", "vae", "--data", str(tmp / "noise.npz")],
        "missing images": ["train", "vae", "--data", str(tmp / "none.npz")],
        "unknown data": ["train", "vae", "--data", "cifar"],
        "classification of a continuous target": [
            "train",
            "bnn",
            "--data",
            "toy",
            "--task",
            "classification",
        ],
        "resume without a checkpoint": ["train", "vae", "--resume"],
        "diagnose without a datatree": ["diagnose", str(tmp)],
    }


CASES = ["empty", "header only", "ragged", "non-numeric", "missing file", "not csv/npz",
         "bad target", "random npz images", "missing images", "unknown data",
         "classification of a continuous target", "resume without a checkpoint",
         "diagnose without a datatree"]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_run_errors_are_one_line(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = _bad_files(tmp_path)[case]
    if argv[0] == "train":
        argv = [*argv, "--epochs", "1", "--quiet", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyro-reparam: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
