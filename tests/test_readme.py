"""The README's commands and snippets, run as written, so that docs that stop being true fail.

* Every ``pyro-reparam ...`` line of a ```bash block runs, in order, through the console
  script's entry point (``pyro_reparam.apps.cli:main``, in this process: a new interpreter per
  command would cost seconds each), from a temporary folder (so ``--out runs/...`` and
  ``diagnose runs/...`` land there), with small sizes substituted: ``--epochs 1`` on
  ``train`` commands (replacing the README's count), ``--iw-samples 10``, ``--hmc-samples 10``
  for HMC, and ``--quiet``.
  The files the README says the image jobs write are checked.
* Not run: the ``make`` lines (they build the virtual environment and run the test suite or
  the full demo; ``tests/apps/test_demo.py`` runs the demo's job) and the ``torchrun`` launch
  (it needs a ``train.py`` the README does not give; ``tests/train`` covers distributed fits).
* The routing tables printed for the demo's model are what ``pr.route`` prints, and the
  families table is what ``pyro-reparam families --markdown`` prints.
* The Python snippets run with the names they assume and do not define: the demo's model for
  the usage snippet (the README names it), a small ``BayesianMLP`` regression for the
  ``fit`` and ArviZ snippets (on CPU unless CUDA is there, one epoch).
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pyro
import pytest
import torch

import pyro_reparam as pr
from pyro_reparam.apps import demo
from pyro_reparam.apps.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _blocks(language: str) -> list[str]:
    """The bodies of the README's fenced blocks in ``language`` ("" for plain blocks)."""
    text = README.read_text()
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.M | re.S)


def _block_after(phrase: str, language: str = "") -> str:
    text = README.read_text()
    start = text.index(phrase)
    return re.search(rf"^```{language}\n(.*?)^```$", text[start:], flags=re.M | re.S).group(1)


def _commands() -> list[str]:
    """The ``pyro-reparam`` lines of the bash blocks, comments removed."""
    lines = [line for block in _blocks("bash") for line in block.splitlines()]
    return [line.split(" #")[0].strip() for line in lines if line.startswith("pyro-reparam ")]


def _small(command: str) -> list[str]:
    """The command with small sizes substituted, as an argument list."""
    args = shlex.split(command)
    if args[1] != "train":
        return args
    if "--epochs" in args:
        args[args.index("--epochs") + 1] = "1"
    else:
        args += ["--epochs", "1"]
    if args[2] in ("vae", "dvae"):
        args += ["--iw-samples", "10"]
    if "hmc" in args:
        args += ["--hmc-samples", "10"]
    return [*args, "--quiet"]


def _written_files() -> list[str]:
    """The files of the README's "Each writes ..." sentence about the image jobs."""
    text = README.read_text()
    sentence = text[text.index("Each writes") :].split(".\n")[0]
    return re.findall(r"`([\w]+\.(?:json|png|pt))`", sentence)


def test_the_readme_has_what_these_tests_run():
    assert [c.split()[1:3] for c in _commands()] == [
        ["train", "vae"], ["train", "dvae"], ["train", "bnn"], ["train", "bnn"],
        ["diagnose", "runs/bnn"],
    ]  # fmt: skip
    skipped = [line for block in _blocks("bash") for line in block.splitlines()
               if line.strip() and not line.startswith("pyro-reparam ")]  # fmt: skip
    assert all(line.split()[0] in ("make", "torchrun") for line in skipped), skipped
    assert "metrics.json" in _written_files() and "interpolation.png" in _written_files()


def test_the_commands_run_as_written(tmp_path, monkeypatch, capsys):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["pyro-reparam"] == "pyro_reparam.apps.cli:main"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYRO_REPARAM_THREADS", "1")
    for command in _commands():
        args = _small(command)
        status = main(args[1:])
        printed = capsys.readouterr()
        assert status == 0, f"{' '.join(args)}\n{printed.out[-2000:]}{printed.err}"
        if args[1] == "train" and args[2] in ("vae", "dvae"):
            out = tmp_path / args[args.index("--out") + 1]
            expected = set(_written_files())
            if args[2] == "dvae":  # the README marks these two as 2-D Gaussian / VAE only
                expected -= {"latent_space.png", "khat.png"}
            assert expected <= {p.name for p in out.iterdir()}, (command, expected)


def test_the_routing_tables_are_what_route_prints():
    x = demo._data()
    printed = str(pr.route(demo.model, demo.guide, x)).splitlines()
    assert _block_after("`pr.route(model, guide, x)` enumerates").splitlines() == printed
    never = str(pr.route(demo.model, demo.guide, x, enumerate="never")).splitlines()
    shown = _block_after('enumerate="never")` (what `pyro-reparam demo` prints').splitlines()
    assert set(shown) <= set(never), (shown, never)


def test_the_families_table_is_what_the_command_prints():
    text = README.read_text()
    table = text[text.index("Generated by `pyro-reparam families --markdown`:") :]
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert rows == pr.families_table(markdown=True).splitlines()


def test_the_usage_snippet_on_the_demo_model(capsys):
    (snippet,) = [b for b in _blocks("python") if "pr.watch_sampling()" in b]
    x = demo._data()
    svi = pyro.infer.SVI(demo.model, demo.guide, pyro.optim.Adam({"lr": 1e-2}),
                         pr.route(demo.model, demo.guide, x).elbo())  # fmt: skip
    names = {"pyro": pyro, "model": demo.model, "guide": demo.guide, "x": x,
             "train_step": lambda: svi.step(x)}  # fmt: skip
    exec(compile(snippet.replace("num_draws=200", "num_draws=20"), "README", "exec"), names)
    assert "ELBO: TraceEnum_ELBO" in capsys.readouterr().out
    for line in snippet.splitlines():  # `expression  # Kind.X`: the comment is its value
        value = re.fullmatch(r"(pr\..+?)\s+# (Kind\.\w+)", line)
        if value:
            assert eval(value.group(1), names) is eval(value.group(2), {"Kind": pr.Kind}), line


@pytest.fixture
def regression(tmp_path, monkeypatch):
    """The names the fit and ArviZ snippets assume: a model, a guide and data."""
    from pyro_reparam.models import BayesianMLP

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    bnn = BayesianMLP(3, 1, (8,), guide="meanfield")
    x, x_val = torch.randn(64, 3), torch.randn(32, 3)
    y, y_val = x.sum(-1) + 0.1 * torch.randn(64), x_val.sum(-1) + 0.1 * torch.randn(32)
    return {"pr": pr, "model": bnn.model, "guide": bnn.guide, "x": x, "y": y,
            "x_val": x_val, "y_val": y_val}  # fmt: skip


def test_the_fit_snippet(regression, tmp_path):
    (snippet,) = [b for b in _blocks("python") if "history = pr.fit(" in b]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    small = snippet.replace("epochs=50", "epochs=1").replace('device="cuda"', f'device="{device}"')
    assert small != snippet
    exec(compile(small, "README", "exec"), regression)
    assert len(regression["history"].train_elbo) == 1
    assert (tmp_path / "elbo.png").exists() and (tmp_path / "runs/fit/checkpoint.pt").exists()


def test_the_arviz_snippet(regression, tmp_path):
    (snippet,) = [b for b in _blocks("python") if "pr.to_datatree(" in b]
    pr.fit(regression["model"], regression["guide"], (regression["x"], regression["y"]),
           epochs=1, progress=False, log=lambda _m: None)  # fmt: skip
    exec(compile(snippet.replace("num_samples=1000", "num_samples=100"), "README", "exec"),
         regression)  # fmt: skip
    assert "posterior" in regression["dt"].children and (tmp_path / "runs/diag").is_dir()
