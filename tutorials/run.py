"""Run the tutorial notebooks top to bottom.

``python -m tutorials.run``: smoke mode (``PYRO_REPARAM_SMOKE=1``: few epochs and samples),
outputs discarded; what ``make test`` does through ``tests/test_tutorials.py``. Each notebook
checks what it teaches with ``assert`` cells; a failing one stops the run with nbclient's
``CellExecutionError``, which names the cell.
``python -m tutorials.run --full``: full mode, outputs (plots included) written back into the
notebooks, as committed; outputs that show an absolute path of this machine are reported and
make the run fail. ``python -m tutorials.run --full 03`` runs only the notebooks whose name
contains ``03``. ``DEVICE=cuda`` runs them on a GPU.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
ABSOLUTE_PATH = re.compile(
    r"(?<![\w.~])/(?:work|tmp|root|home|Users|private|var/folders)/[^\s'\"`)]*"
)
"""A path of the machine that ran the notebook (a home, a checkout, a temporary folder)."""


def notebooks() -> list[Path]:
    return sorted(HERE.glob("[0-9][0-9]_*.ipynb"))


def execute(path: Path, full: bool, timeout: int = 900):
    """Execute one notebook in a fresh kernel and return it; in full mode save its outputs.

    Raises ``nbclient.exceptions.CellExecutionError`` when a cell fails, an ``assert`` of the
    notebook included."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    before = os.environ.get("PYRO_REPARAM_SMOKE")
    os.environ["PYRO_REPARAM_SMOKE"] = "0" if full else "1"  # the kernel inherits it
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(HERE.parent)}}).execute()  # fmt: skip
    finally:
        if before is None:
            os.environ.pop("PYRO_REPARAM_SMOKE", None)
        else:
            os.environ["PYRO_REPARAM_SMOKE"] = before
    if full:
        nbformat.write(nb, path)
    return nb


def output_texts(nb) -> list[tuple[int, str]]:
    """``(cell index, text)`` of every text output of the notebook's code cells."""
    texts = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            parts = [out.get("text", ""), out.get("evalue", ""), *out.get("traceback", [])]
            data = out.get("data", {})
            parts += [data.get(k, "") for k in ("text/plain", "text/html", "text/markdown")]
            texts += [(i, "".join(p) if isinstance(p, list) else p) for p in parts if p]
    return texts


def absolute_paths(nb) -> list[str]:
    """Absolute paths of this machine shown in the notebook's outputs, as ``cell N: path``."""
    return [f"cell {i}: {m}" for i, text in output_texts(nb) for m in ABSOLUTE_PATH.findall(text)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tutorials.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--full", action="store_true", help="full mode; store the outputs")
    parser.add_argument("names", nargs="*", help="only notebooks whose name contains these")
    args = parser.parse_args(argv)
    leaks = []
    for path in notebooks():
        if args.names and not any(n in path.name for n in args.names):
            continue
        t = time.perf_counter()
        nb = execute(path, args.full)
        seconds = time.perf_counter() - t
        print(f"{path.name}: {seconds:.0f} s ({'full' if args.full else 'smoke'})", flush=True)
        if args.full:
            leaks += [f"{path.name}, {where}" for where in absolute_paths(nb)]
    if leaks:
        print("outputs show absolute paths (hide them in the notebook):", *leaks, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
