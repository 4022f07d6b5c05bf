"""Argument types of the command line: each refuses what would train silently wrong."""

from __future__ import annotations

import argparse
import math

MAX_LR = 1.0


def prior(value: str) -> str | float:
    if value in ("fan_in", "nngp"):
        return value
    try:
        scale = float(value)
    except ValueError:
        scale = -1.0
    if not scale > 0:
        raise argparse.ArgumentTypeError(
            f"expected fan_in, nngp or a positive scale, got {value!r}"
        )
    return scale


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def at_least_two(text: str) -> int:
    value = positive(text)
    if value < 2:
        raise argparse.ArgumentTypeError(
            f"needs at least 2 (one category is no choice), got {text}"
        )
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def learning_rate(text: str) -> float:
    value = positive_float(text)
    if value > MAX_LR:
        raise argparse.ArgumentTypeError(
            f"{text} is far above any learning rate Adam trains with (at most {MAX_LR}); "
            "try 1e-3 to 1e-2"
        )
    return value
