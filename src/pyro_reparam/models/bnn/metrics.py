"""Calibration metrics for predictive intervals and class probabilities."""

from __future__ import annotations

import itertools

import torch


def interval_coverage(y: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> float:
    """Fraction of ``y`` inside ``[lower, upper]``."""
    return ((y >= lower) & (y <= upper)).double().mean().item()


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 10) -> float:
    """ECE: ``sum_b |B_b| / N * |accuracy(B_b) - confidence(B_b)|`` over confidence bins;
    ``probs (N, classes)``, ``labels (N,)``."""
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=probs.dtype)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges.tolist()):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            gap = (correct[inside].mean() - confidence[inside].double().mean()).abs()
            ece += inside.double().mean().item() * gap.item()
    return ece
