"""Timing several configurations fairly: interleaved repeats, median per configuration."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

from pyro_reparam.tables import format_table


def interleaved_medians(
    configs: Mapping[str, Callable[[], object]], repeats: int, per: int
) -> dict[str, float]:
    """Run every configuration once per round for ``repeats`` rounds (so that drifts in machine
    load hit all of them alike) and return each one's median seconds divided by ``per`` (steps
    or epochs per run)."""
    times = {name: [] for name in configs}
    for _ in range(repeats):
        for name, fn in configs.items():
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) / per)
    return {name: statistics.median(ts) for name, ts in times.items()}


def ratio_table(
    configs: Mapping[str, Callable[[], object]],
    reference: str,
    repeats: int,
    per: int,
    unit: str,
    label: str,
    ms_digits: int = 2,
) -> tuple[dict, str]:
    """Warm every configuration up once, time them interleaved, and tabulate each one's median
    per ``unit`` and its ratio to ``reference``: ``(figures by name, table text)``; ``label``
    heads the first column."""
    for fn in configs.values():  # imports, allocator, first-call paths
        fn()
    medians = interleaved_medians(configs, repeats, per)
    base = medians[reference]
    table, rows = {}, []
    for name, med in medians.items():
        table[name] = {f"seconds_per_{unit}": med, "ratio_to_reference": med / base}
        rows.append([name, f"{med * 1e3:.{ms_digits}f} ms", f"{med / base:.2f}x"])
    return table, format_table([label, f"per {unit} (median)", "time / reference"], rows)
