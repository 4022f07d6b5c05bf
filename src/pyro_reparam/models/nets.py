"""Small network builders shared by the ready models."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
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


def check_rows(x: torch.Tensor, width: int, who: str) -> None:
    """Refuse ``x`` unless it is a floating tensor of rows of ``width`` features: ``(B, width)``
    (a wrong width would otherwise surface as a shape error deep inside the encoder)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{who}: x must be a tensor of shape (batch, {width}), got {type(x).__name__}"
        )
    if x.dim() < 1 or x.shape[-1] != width:
        raise ValueError(
            f"{who}: x has shape {tuple(x.shape)}, but this model was built for rows of {width} "
            f"features, (batch, {width}); flatten images to rows, or build it with x_dim="
            f"{x.shape[-1] if x.dim() else '...'}"
        )
    if not x.is_floating_point():
        raise TypeError(f"{who}: x must be floating point (got {x.dtype}); use x.float()")
