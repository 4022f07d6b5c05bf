"""Run the tutorial notebooks top to bottom.

``python -m tutorials.run``: smoke mode (``PYRO_REPARAM_SMOKE=1``: few epochs and samples),
outputs discarded; what ``make test`` does through ``tests/test_tutorials.py``.
``python -m tutorials.run --full``: full mode, outputs (plots included) written back into the
notebooks, as committed. ``DEVICE=cuda`` runs them on a GPU.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

HERE = Path(__file__).parent


def notebooks() -> list[Path]:
    return sorted(HERE.glob("[0-9][0-9]_*.ipynb"))


def execute(path: Path, full: bool, timeout: int = 900) -> float:
    """Execute one notebook in a fresh kernel; in full mode save its outputs. Returns seconds."""
    import nbformat
    from nbclient import NotebookClient

    os.environ["PYRO_REPARAM_SMOKE"] = "0" if full else "1"
    nb = nbformat.read(path, as_version=4)
    t = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(HERE.parent)}}).execute()  # fmt: skip
    if full:
        nbformat.write(nb, path)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tutorials.run", description=__doc__)
    parser.add_argument("--full", action="store_true", help="full mode; store the outputs")
    parser.add_argument("names", nargs="*", help="only notebooks whose name contains these")
    args = parser.parse_args(argv)
    for path in notebooks():
        if args.names and not any(n in path.name for n in args.names):
            continue
        seconds = execute(path, args.full)
        print(f"{path.name}: {seconds:.0f} s ({'full' if args.full else 'smoke'})", flush=True)


if __name__ == "__main__":
    main()
