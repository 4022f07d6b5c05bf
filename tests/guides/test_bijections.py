"""The bijection onto positive-definite matrices (Wishart sites), which Pyro lacks."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

import pyro_reparam as pr
from pyro_reparam.guides.bijections import PositiveDefiniteBijection


@pytest.mark.parametrize("d", [1, 2, 3])
def test_log_det_is_that_of_the_lower_triangle(d):
    """``log|det dS/du|`` over the ``d(d+1)/2`` free entries of ``S``, against autograd."""
    t = PositiveDefiniteBijection()
    u = torch.randn(d * (d + 1) // 2, dtype=torch.float64)
    rows, cols = torch.tril_indices(d, d)
    jacobian = torch.autograd.functional.jacobian(lambda v: t(v)[rows, cols], u)
    s = t(u)
    assert torch.allclose(t.log_abs_det_jacobian(u, s), torch.linalg.slogdet(jacobian)[1])
    assert torch.allclose(t.inv(s), u)
    assert t.forward_shape((5, len(u))) == (5, d, d) and t.inverse_shape((5, d, d)) == (5, len(u))


def test_a_wishart_site_is_scored_on_its_own_measure():
    def model():
        pyro.sample("cov", dist.Wishart(torch.tensor(5.0), torch.eye(3)))

    guide = pr.AutoReparamGuide(model)
    guide()
    site = poutine.trace(guide).get_trace().nodes["cov"]
    value = site["value"]
    assert torch.linalg.eigvalsh(value).min() > 0 and torch.allclose(value, value.mT)
    t = PositiveDefiniteBijection()
    u = t.inv(value)
    base = dist.Normal(guide.cov.loc, guide.cov.scale).log_prob(u).sum()
    expected = base - t.log_abs_det_jacobian(u, value)
    assert torch.allclose(site["fn"].log_prob(value), expected, atol=1e-4)
