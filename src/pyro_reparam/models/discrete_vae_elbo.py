"""The leave-one-out score-function ELBO of a :class:`~pyro_reparam.models.DiscreteVAE`,
computed directly from the module (issue 19).

What :func:`pyro_reparam.route` builds for ``dvae.model``/``dvae.guide`` with
``estimator="score"`` is :class:`~pyro_reparam.estimators.ScoreFunctionELBO` with a
leave-one-out baseline over ``K`` vectorized particles. For this model its estimate and
surrogate are, with ``z_k ~ q(z | x)`` drawn per datum (``k = 1..K``),
``f_k = log p(z_k) + log p(x | z_k) - log q(z_k | x)`` per datum and
``b_k = (sum_j f_j - f_k) / (K - 1)``::

    loss      = -(1/K) sum_{k, data} f_k
    surrogate = -(1/K) sum_{k, data} [log p(z_k) + log p(x | z_k)
                                      + log q(z_k | x) * stop(f_k - b_k)]

(the downstream cost of ``z`` is all of ``f``: both model sites depend on it). Pyro's tracing
finds the same by provenance tracking on every step; this class writes it down. It draws the
particles as Pyro's vectorized particle plate does (the guide's distribution expanded to
``(K, B)``), so with one seed it sees the same draws as the traced ELBO: the same loss and the
same gradients (tests/models/test_discrete_vae_elbo.py).

Any other model/guide pair, or a DiscreteVAE with another ``estimator``, is handed to the routed
(traced) ELBO of that pair, routed once on its first arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pyro_reparam.estimators.surrogate import SurrogateELBO
from pyro_reparam.models.nets import check_rows
from pyro_reparam.models.registration import Named, Registration

if TYPE_CHECKING:
    from pyro_reparam.models.discrete_vae import DiscreteVAE


class DiscreteVAEELBO(SurrogateELBO):
    """The routed leave-one-out score-function ELBO of ``dvae`` (``estimator="score"``),
    without tracing; a ``pyro.infer.ELBO`` for ``SVI`` and :func:`pyro_reparam.fit`. The
    parameters are registered with ``pyro.module``/``pyro.param`` under the names
    ``dvae.model``/``dvae.guide`` use. ``num_particles >= 2``."""

    def __init__(self, dvae: DiscreteVAE, num_particles: int = 4):
        if (
            isinstance(num_particles, bool)
            or not isinstance(num_particles, int)
            or (num_particles < 2)
        ):
            raise ValueError(
                "DiscreteVAEELBO: leave-one-out needs num_particles >= 2 (an integer), got "
                f"{num_particles!r}"
            )
        super().__init__(num_particles=num_particles, vectorize_particles=True,
                         max_plate_nesting=2)  # fmt: skip
        self.dvae = dvae
        self._registration = Registration(dvae.param_entries)
        self._traced: dict[tuple, object] = {}

    # -- the pair it computes directly, and the fallback for any other -------------------------
    def _direct(self, model, guide) -> bool:
        d = self.dvae
        return d.estimator == "score" and model == d.model and guide == d.guide

    def _fallback(self, model, guide, args, kwargs):
        """The routed ELBO of ``(model, guide)`` (made on the first call with them)."""
        key = (model, guide)
        if key not in self._traced:
            from pyro_reparam.routing import route

            plan = route(model, guide, *args, num_particles=self.num_particles, **kwargs)
            self._traced[key] = plan.elbo()
        return self._traced[key]

    def step_params(self, model, guide, *args, **kwargs) -> Named | None:
        """The parameters a step on ``(model, guide)`` trains, ``(param-store name, tensor)``
        in name order, when the step is the direct one and the store already holds them
        (:mod:`~pyro_reparam.models.registration`); ``None``: trace the step for them."""
        return self._registration.step_params() if self._direct(model, guide) else None

    def loss(self, model, guide, *args, **kwargs) -> float:
        if not self._direct(model, guide):
            return self._fallback(model, guide, args, kwargs).loss(model, guide, *args, **kwargs)
        with torch.no_grad():
            return float(self._terms(*args, **kwargs)[0])

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        if not self._direct(model, guide):
            fallback = self._fallback(model, guide, args, kwargs)
            return fallback.loss_and_grads(model, guide, *args, **kwargs)
        return super().loss_and_grads(model, guide, *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        if not self._direct(model, guide):
            fallback = self._fallback(model, guide, args, kwargs)
            return fallback.differentiable_loss(model, guide, *args, **kwargs)
        return super().differentiable_loss(model, guide, *args, **kwargs)

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("DiscreteVAEELBO computes its pair without traces")

    def _loss_and_surrogate_loss(self, model, guide, args, kwargs):
        return self._terms(*args, **kwargs)

    # -- the estimator -------------------------------------------------------------------------
    def _terms(self, x: torch.Tensor):
        """``(loss, surrogate loss)`` on the batch ``x`` (see the module docstring)."""
        d, k = self.dvae, self.num_particles
        check_rows(x, d.x_dim, "DiscreteVAE")
        if self._registration.must_register():
            d._register_guide()  # the guide's registration, then the model's, as a step traces
            d._register_model()
        batch = x.shape[0]
        q = d.posterior(x).expand(torch.Size([k, batch]))  # Pyro's vectorized particle plate
        z = q.sample()
        log_q = q.log_prob(z)  # (K, B)
        log_pz = d.prior(batch).expand(torch.Size([k, batch])).log_prob(z)
        log_px = d.likelihood_given(z).log_prob(x)
        f = log_pz + log_px - log_q
        cost = f.detach()
        baseline = (cost.sum(0, keepdim=True) - cost) / (k - 1)
        loss = -f.detach().sum() / k
        surrogate = -(log_pz.sum() + log_px.sum() + (log_q * (cost - baseline)).sum()) / k
        return loss, surrogate

    def state_dict(self) -> dict:
        """Leave-one-out keeps no state."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(
                f"DiscreteVAEELBO keeps no estimator state, but the state to load has "
                f"{sorted(state)[:3]}"
            )
