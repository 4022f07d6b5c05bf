"""Every tutorial notebook is committed executed, checks what it teaches with ``assert`` cells,
and runs top to bottom in smoke mode; a failing check fails the test."""

import re

import nbformat
import pytest
from nbclient.exceptions import CellExecutionError

from tutorials.run import absolute_paths, execute, notebooks

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _code_cells(path):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def test_the_five_tutorials_are_there():
    assert [p.name[:2] for p in notebooks()] == ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.stem)
def test_notebook_is_committed_with_its_outputs(path):
    """`make tutorials` stores the outputs: every code cell ran, in order, without errors."""
    cells = _code_cells(path)
    counts = [c.execution_count for c in cells]
    assert None not in counts and counts == sorted(counts), path.name
    assert not any(o.output_type == "error" for c in cells for o in c.outputs), path.name
    assert any("image/png" in o.get("data", {}) for c in cells for o in c.outputs), path.name


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.stem)
def test_committed_outputs_show_no_absolute_paths(path):
    """No /work/..., /tmp/..., /root/... of the machine that ran it (warnings, cell files)."""
    assert absolute_paths(nbformat.read(path, as_version=4)) == [], path.name


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.stem)
def test_notebook_checks_what_it_teaches(path):
    asserts = [c for c in _code_cells(path) if re.search(r"^\s*assert ", c.source, re.M)]
    assert len(asserts) >= 3, f"{path.name}: {len(asserts)} cells with assert"


def _run(path):
    try:
        execute(path, full=False)
    except CellExecutionError as err:  # a failed assert of the notebook, or any other error
        pytest.fail(f"{path.name} failed in smoke mode:\n{ANSI.sub('', str(err))}", pytrace=False)


def test_a_failing_check_fails_the_run(tmp_path):
    """What makes a broken fact visible: nbclient raises and `_run` turns it into a failure."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell('import os\nassert os.environ["PYRO_REPARAM_SMOKE"] == "1"'),
        nbformat.v4.new_code_cell('assert 1 + 1 == 3, "a fact that is not true"'),
    ]
    path = tmp_path / "99_broken.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(pytest.fail.Exception, match="a fact that is not true") as err:
        _run(path)
    assert "99_broken.ipynb failed in smoke mode" in str(err.value)
    assert "PYRO_REPARAM_SMOKE" not in str(err.value)  # the first cell passed


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_mode(path):
    _run(path)
