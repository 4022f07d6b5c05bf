"""Plain-text tables for the plan, the families registry and the CLI."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(
    header: Sequence[str], rows: Sequence[Sequence[object]], rule: bool = False
) -> str:
    """Left-aligned columns two spaces apart; the last column is not padded (it may be long).
    Cells are formatted with ``str``."""
    body = [tuple(header), *(tuple(str(c) for c in r) for r in rows)]
    widths = [max(len(r[i]) for r in body) for i in range(len(header) - 1)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in body
    ]
    if rule:
        lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
