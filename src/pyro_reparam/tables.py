"""The one plain-text table printer: the plan, the families registry, gradient statistics, the
CLI and the benchmarks all print through :func:`format_table`."""

from __future__ import annotations

import numbers
from collections.abc import Sequence


def format_table(
    header: Sequence[str],
    rows: Sequence[Sequence[object]],
    rule: bool = False,
    number_format: str = ".4g",
    markdown: bool = False,
) -> str:
    """Columns two spaces apart. Numbers (``int``, ``float``, 0-dim tensors are not numbers:
    format them first) are written with ``number_format`` (``int`` as is) and right-aligned,
    text is left-aligned; the last column is not padded when it holds text (it may be long).
    ``rule``: a line of dashes under the header. ``markdown``: a Markdown table instead."""
    cells = [[_cell(c, number_format) for c in r] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])
    numeric = [
        bool(rows) and all(_is_number(r[i]) for r in rows if i < len(r)) for i in range(len(header))
    ]
    body = [list(header), *cells]
    for r in body:
        if len(r) != len(header):
            raise ValueError(f"format_table: a row has {len(r)} cells, the header {len(header)}")
    widths = [max(len(r[i]) for r in body) for i in range(len(header))]
    last = len(header) - 1
    lines = []
    for r in body:
        parts = [
            c.rjust(w) if numeric[i] else (c if i == last else c.ljust(w))
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
    if rule:
        lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


def _cell(value: object, number_format: str) -> str:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(value)
    if _is_number(value):
        return format(value, number_format)
    return str(value)
