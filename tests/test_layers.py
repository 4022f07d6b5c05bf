"""The architecture is enforced: import-linter's layer contracts hold (and can fail), the
package imports from a plain checkout, and ``import pyro_reparam`` stays light."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _copy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    shutil.copytree(ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def test_layer_contracts_hold():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.lower().replace("0 broken", "")


def test_a_core_module_importing_the_apps_breaks_a_contract(tmp_path):
    root = _copy_tree(tmp_path)
    target = root / "src" / "pyro_reparam" / "estimators" / "score_elbo.py"
    target.write_text(target.read_text() + "\nimport pyro_reparam.apps.cli  # noqa: E402,F401\n")
    result = _lint(root)
    assert result.returncode != 0
    assert "the library core never imports the models or the applications BROKEN" in result.stdout
    assert "pyro_reparam.estimators.score_elbo -> pyro_reparam.apps.cli" in result.stdout


def test_a_plain_checkout_imports_from_itself(tmp_path):
    root = _copy_tree(tmp_path)
    code = "import pyro_reparam, pyro_reparam.models as m; print(pyro_reparam.__file__, m.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(root / "src")},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    assert all(path.startswith(str(root / "src")) for path in out), out


def test_import_pyro_reparam_stays_light():
    code = (
        "import sys, pyro_reparam, pyro_reparam.models;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'arviz')"
        " or m.startswith('pyro_reparam.apps')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout.strip()
    assert out == "[]", out
