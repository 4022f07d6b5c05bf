"""Every tutorial notebook runs top to bottom in smoke mode (few epochs and samples)."""

import pytest

from tutorials.run import execute, notebooks


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_mode(path):
    execute(path, full=False)
