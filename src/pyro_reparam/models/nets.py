"""Small network builders shared by the ready models."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU}


def mlp(sizes: Sequence[int], activation: str = "relu") -> nn.Sequential:
    """``Linear -> act -> ... -> Linear`` through ``sizes`` (no activation after the last)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
        raise ValueError(f"layer sizes must be >= 2 positive integers, got {list(sizes)}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)
