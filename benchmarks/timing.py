"""Timing several configurations fairly: interleaved repeats, median per configuration."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping


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
