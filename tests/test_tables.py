"""The one table printer: aligned columns for text and numbers, Markdown on request."""

import pytest

from pyro_reparam.tables import format_table


def test_columns_line_up_with_numbers_right_aligned():
    text = format_table(
        ("estimator", "K", "rel. var", "note"),
        [("leave-one-out", 4, 1.4912345, "ok"), ("bare", 1, 2034.5, "noisy")],
        rule=True,
    )
    lines = text.splitlines()
    assert lines[1] == "-" * max(len(line) for line in lines)
    header, first, second = lines[0], lines[2], lines[3]
    # every column starts (text) or ends (numbers) at the same offset on every line
    assert first.index("4") == second.index("1") == header.index("K")
    assert first.index("1.491") + len("1.491") == second.index("2034") + len("2034")
    assert first.index("1.491") + len("1.491") == header.index("rel. var") + len("rel. var")
    assert first.index("ok") == second.index("noisy") == header.index("note")


def test_markdown_and_bad_rows():
    md = format_table(("a", "b"), [("x", 0.5)], markdown=True)
    assert md.splitlines() == ["| a | b |", "|---|---|", "| x | 0.5 |"]
    with pytest.raises(ValueError, match="a row has 1 cells, the header 2"):
        format_table(("a", "b"), [("x",)])
