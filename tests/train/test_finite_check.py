"""``all_finite``, the per-step check of gradients and parameters: exact for NaN and both
infinities, and not fooled by finite values whose norm overflows."""

import pytest
import torch

from pyro_reparam.train.finite import all_finite


def _tensors(bad=None):
    ts = [torch.randn(40, 30), torch.randn(30), torch.randn(3, dtype=torch.float64)]
    if bad is not None:
        ts[1][7] = bad
    return ts


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_nan_or_an_infinity_anywhere_is_caught(bad):
    assert all_finite(_tensors())
    assert not all_finite(_tensors(bad))


def test_huge_finite_values_whose_norm_overflows_are_finite():
    huge = _tensors(3e38)  # float32's max is 3.4e38: the 2-norm overflows, the values do not
    assert torch.isinf(torch.linalg.vector_norm(huge[1]))
    assert all_finite(huge)
    assert not all_finite([*huge, torch.tensor([1.0, float("nan")])])


def test_no_tensors_or_empty_ones_are_finite():
    assert all_finite([]) and all_finite([torch.empty(0)])
