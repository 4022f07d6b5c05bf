"""Saving figures the same way everywhere: at most ``MAX_PIXELS`` on each side, and the titles
and axis labels written into the PNG so that a test (or a user) can read them back.

A figure of ``w x h`` inches saved at ``dpi`` is ``w * dpi x h * dpi`` pixels; ``save_figure``
lowers the dpi until the longer side fits. The labels go into a PNG text chunk ``"axes"``: a JSON
list of ``{"title", "xlabel", "ylabel"}`` per axes (colour bars included), with the figure's
suptitle as the chunk ``"Title"``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MAX_PIXELS = 2000
AXES_KEY = "axes"


def save_figure(fig: Any, path: str | Path, dpi: float = 120) -> Path:
    """Lay out ``fig``, save it as a PNG at ``dpi`` (lowered so both sides stay under
    ``MAX_PIXELS``) with its labels as metadata, close it, and return the path."""
    from pyro_reparam.plotting import pyplot

    plt = pyplot()
    width, height = fig.get_size_inches()
    dpi = min(dpi, (MAX_PIXELS - 1) / max(width, height))
    metadata = {"Title": fig.get_suptitle(), AXES_KEY: json.dumps(axes_labels(fig))}
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi, metadata=metadata)
    plt.close(fig)
    return path


def axes_labels(fig: Any) -> list[dict[str, str]]:
    """``{"title", "xlabel", "ylabel"}`` of each visible axes of ``fig``."""
    return [
        {"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel()}
        for ax in fig.get_axes()
        if ax.get_visible() and ax.axison
    ]


def saved_labels(path: str | Path) -> dict[str, Any]:
    """What :func:`save_figure` wrote into a PNG: ``{"title": suptitle, "axes": [...]}``
    (empty for a PNG saved otherwise)."""
    from PIL import Image

    with Image.open(path) as im:
        text = dict(getattr(im, "text", {}))
    return {"title": text.get("Title", ""), "axes": json.loads(text.get(AXES_KEY, "[]"))}
