"""Every tutorial notebook is committed executed, and runs top to bottom in smoke mode."""

import nbformat
import pytest

from tutorials.run import execute, notebooks


def test_the_five_tutorials_are_there():
    assert [p.name[:2] for p in notebooks()] == ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.stem)
def test_notebook_is_committed_with_its_outputs(path):
    """`make tutorials` stores the outputs: every code cell ran, in order, without errors."""
    cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    counts = [c.execution_count for c in cells]
    assert None not in counts and counts == sorted(counts), path.name
    assert not any(o.output_type == "error" for c in cells for o in c.outputs), path.name
    assert any("image/png" in o.get("data", {}) for c in cells for o in c.outputs), path.name


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_mode(path):
    execute(path, full=False)
