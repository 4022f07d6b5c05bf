"""The command line: --version, defaults in every help line, one-line errors with exit 2, a run
folder never overwritten without --resume or --overwrite, and the thread policy."""

import argparse
import subprocess
import sys

import pytest
import torch

from pyro_reparam.apps import threads
from pyro_reparam.apps.cli import build_parser, main

COMMANDS = [["families"], ["demo"], ["train", "vae"], ["train", "dvae"], ["train", "bnn"],
            ["diagnose"]]  # fmt: skip


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith("pyro-reparam 0.")


def _subparser(parser, path):
    for name in path:
        action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_flag_has_help_and_shows_its_default(path):
    parser = _subparser(build_parser(), path)
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, f"{path} {action.option_strings} has no help text"
        shown = parser._get_formatter()._get_help_string(action)
        trivial = any(action.default is d for d in (None, False, argparse.SUPPRESS))
        assert trivial or "default" in shown, (path, action.option_strings, shown)


def test_a_library_error_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "empty.csv").write_text("")
    assert main(["train", "bnn", "--data", str(tmp_path / "empty.csv")]) == 2
    err = capsys.readouterr().err
    assert err == f"pyro-reparam: error: train bnn: {tmp_path / 'empty.csv'} is empty; it needs " \
        "a header row and data rows\n"  # fmt: skip


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no datatree\.nc"):
        main(["diagnose", str(tmp_path), "--debug"])


def test_the_installed_command_prints_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pyro_reparam.apps.cli", "diagnose", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


def test_a_run_folder_with_a_checkpoint_needs_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"earlier run")
    args = ["train", "dvae", "--epochs", "1", "--num-latents", "4", "--out", str(out), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "holds a checkpoint of an earlier run; pass --resume" in err
    assert (out / "checkpoint.pt").read_bytes() == b"earlier run"
    assert main([*args, "--resume"]) == 2  # a foreign file is refused, not overwritten
    assert "checkpoint" in capsys.readouterr().err
    assert (out / "checkpoint.pt").read_bytes() == b"earlier run"
    with pytest.raises(SystemExit):
        main([*args, "--resume", "--overwrite"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_resume_without_a_checkpoint_says_so(tmp_path, capsys):
    assert main(["train", "vae", "--out", str(tmp_path / "new"), "--resume"]) == 2
    assert "--resume: no checkpoint.pt in" in capsys.readouterr().err


def test_runs_are_named_after_the_data_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from pyro_reparam.apps.cli_commands import run_dir

    args = build_parser().parse_args(["train", "bnn", "--data", "houses.csv"])
    assert str(run_dir(args)) == "runs/bnn-houses"
    args = build_parser().parse_args(["train", "vae"])
    assert str(run_dir(args)) == "runs/vae"


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["train", "vae", "--lr", "1e6"], "--lr"),
        (["train", "bnn", "--lr", "-0.5"], "--lr"),
        (["train", "bnn", "--lr", "nan"], "--lr"),
        (["train", "dvae", "--num-categories", "1"], "--num-categories"),
        (["train", "dvae", "--temperature", "0"], "--temperature"),
        (["train", "vae", "--epochs", "0"], "--epochs"),
        (["train", "vae", "--iwae", "1"], "--iwae"),
        (["train", "vae", "--threads", "0"], "--threads"),
    ],
)
def test_silently_wrong_settings_are_refused(argv, flag, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


def test_thread_policy(monkeypatch):
    before = torch.get_num_threads()
    try:
        for name in (threads.ENV_VARIABLE, "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            monkeypatch.delenv(name, raising=False)
        assert threads.apply_thread_policy() == threads.DEFAULT_THREADS == 1
        assert threads.apply_thread_policy(2) == 2
        monkeypatch.setenv(threads.ENV_VARIABLE, "3")
        assert threads.apply_thread_policy() == 3
        monkeypatch.setenv(threads.ENV_VARIABLE, "many")
        with pytest.raises(ValueError, match="PYRO_REPARAM_THREADS='many'"):
            threads.apply_thread_policy()
        monkeypatch.delenv(threads.ENV_VARIABLE)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        torch.set_num_threads(2)
        assert threads.apply_thread_policy() == 2  # torch read OMP_NUM_THREADS itself
    finally:
        torch.set_num_threads(before)
