"""``all_finite``, the per-step check of gradients and parameters: exact for NaN and both
infinities, and not fooled by finite values whose norm overflows."""

import pytest
import torch

from pyro_reparam.train.finite import SUM_FROM, all_finite

SIZES = {"small tensors (fused norms)": 30, "large tensors (sums)": 3 * SUM_FROM}


def _tensors(size, bad=None):
    ts = [torch.randn(40, 30), torch.randn(size), torch.randn(3, dtype=torch.float64)]
    if bad is not None:
        ts[1][7] = bad
    return ts


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_nan_or_an_infinity_anywhere_is_caught(bad, size):
    assert all_finite(_tensors(size))
    assert not all_finite(_tensors(size, bad))


def test_opposite_infinities_are_caught_in_a_sum():
    assert not all_finite([torch.tensor([float("inf"), -float("inf")]).repeat(2 * SUM_FROM)])


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_huge_finite_values_whose_norm_or_sum_overflows_are_finite(size):
    huge = _tensors(size, 3e38)  # float32's max is 3.4e38: the values are finite
    huge[1][8] = 3e38  # the 2-norm and the sum overflow
    assert torch.isinf(torch.linalg.vector_norm(huge[1])) and torch.isinf(huge[1].sum())
    assert all_finite(huge)
    assert not all_finite([*huge, torch.tensor([1.0, float("nan")])])


def test_no_tensors_or_empty_ones_are_finite():
    assert all_finite([]) and all_finite([torch.empty(0)])
