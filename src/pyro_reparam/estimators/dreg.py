r"""DReG (Tucker, Lawson, Gu & Maddison 2019): doubly reparameterized gradients of the IWAE bound.

For a fully reparameterized guide, ``z_k = z(\epsilon_k; \phi)``, and the IWAE bound
``\hat L = \log \frac1K \sum_k w_k`` with ``\log w_k = \log p_\theta(x, z_k) - \log q_\phi(z_k)``,
the plain gradient for the guide parameters is

.. math:: \nabla_\phi \hat L = \sum_k \tilde w_k \Big(\frac{\partial \log w_k}{\partial z_k}
          \frac{d z_k}{d\phi} - \frac{\partial \log q_\phi(z_k)}{\partial \phi}\Big|_{z_k}\Big).

The last term is a score function in disguise; applying the reparameterization trick to it a
second time gives (in expectation) the doubly reparameterized estimator

.. math:: \nabla_\phi^{\rm DReG} = \sum_k \tilde w_k^2\,
          \frac{\partial \log w_k}{\partial z_k} \frac{d z_k}{d\phi},

the squared normalized weights times the pathwise derivative with ``\phi`` stopped in
``\log q_\phi``. Its signal-to-noise ratio does not decay as ``1/\sqrt K`` (Rainforth et al.
2018 show the plain IWAE guide gradient's does). The model parameters keep the usual IWAE
gradient ``\sum_k \tilde w_k \nabla_\theta \log p_\theta(x, z_k)``.

**How the surrogate is built** (one backward pass, both parameter sets):

* model: ``\sum_k \tilde w_k \log p_\theta(x, z_k)``, where the model sees each guide value
  through a view of it whose gradient is multiplied by ``\tilde w_k`` (a tensor hook set once
  the weights are known): ``\theta`` gets ``\tilde w_k``, the path into ``z`` gets
  ``\tilde w_k^2``;
* guide: ``-\sum_k \tilde w_k^2 (\log q_\phi(z_k) - \log q_\phi(\mathrm{stop}\, z_k))``, whose
  gradient is only the pathwise part (the guide is run once more on its detached values,
  :func:`~pyro_reparam.estimators.vimco.direct_log_probs`, so hierarchical guides are right too).

Per datum (independent data plates) as in :mod:`.vimco`. Parameters shared by the model and
the guide get the sum of both rules, which is not DReG's: keep them apart. Every guide site
must be fully reparameterized (``has_rsample`` and no score term).
"""

from __future__ import annotations

import torch
from pyro.poutine.messenger import Messenger

from pyro_reparam.estimators.vimco import (
    ImportanceWeightedELBO,
    direct_log_probs,
    is_score_site,
)


class _WeightedViews(Messenger):
    """Hands the model a view of each replayed (latent) value; :meth:`weight` later scales the
    gradient that flows back through each view."""

    def __init__(self):
        super().__init__()
        self.views: dict[str, torch.Tensor] = {}

    def _pyro_post_sample(self, msg):
        value = msg["value"]
        if (
            not msg["is_observed"]
            and torch.is_tensor(value)
            and value.requires_grad
            and msg["name"] not in self.views
        ):
            view = value.view_as(value)
            msg["value"] = view
            self.views[msg["name"]] = view


class DReG_ELBO(ImportanceWeightedELBO):
    """The IWAE bound with the doubly reparameterized guide gradient (module docstring).

    :param int num_particles: ``K >= 1`` vectorized particles (``K = 1`` is sticking the
        landing).
    :param max_plate_nesting: the model's plate nesting, guessed when infinite.

    ``loss`` is the negative IWAE bound estimate, as for ``RenyiELBO(alpha=0)``.
    """

    min_particles = 1

    def _estimate(self, model, guide, args, kwargs):
        views = _WeightedViews()
        model_trace, guide_trace, raw, wrapped_guide = self._traces(
            model, guide, args, kwargs, model_handler=views
        )
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and (is_score_site(site) or not site["fn"].has_rsample):
                raise ValueError(
                    f"DReG_ELBO: guide site {name!r} ({type(site['fn']).__name__}) is not "
                    "reparameterized; DReG needs a fully reparameterized guide (use VIMCO_ELBO "
                    "for discrete sites)"
                )
        direct = direct_log_probs(wrapped_guide, raw, args, kwargs)
        sum_dims, scale = self._datum_terms(model_trace, guide_trace)
        log_p = 0.0
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                log_p = log_p + self._per_datum(site["log_prob"], sum_dims, scale)
        log_q, pathwise_q = 0.0, 0.0
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample":
                lq = self._per_datum(site["log_prob"], sum_dims, scale)
                log_q = log_q + lq
                pathwise_q = pathwise_q + lq - self._per_datum(direct[name], sum_dims, scale)
        lw = (log_p - log_q).detach()
        bound = self._bound(lw, scale)
        weights = torch.softmax(lw, 0)
        for name, view in views.views.items():
            fn = model_trace.nodes[name]["fn"]
            w = _align(weights, view.dim() - len(fn.event_shape), len(fn.event_shape))
            view.register_hook(lambda g, w=w: g * w)
        surrogate = (weights * log_p).sum() - (weights.pow(2) * pathwise_q).sum()
        if scale is not None:
            surrogate = surrogate * scale
        return -bound, -surrogate


def _align(weights: torch.Tensor, batch_dims: int, event_dims: int) -> torch.Tensor:
    """``weights`` (particles at dim 0, one dim per plate) shaped to broadcast against a value
    with ``batch_dims`` batch dimensions and ``event_dims`` event dimensions."""
    while weights.dim() > batch_dims and weights.shape[0] == 1:
        weights = weights.squeeze(0)
    return weights.reshape(weights.shape + (1,) * event_dims)
