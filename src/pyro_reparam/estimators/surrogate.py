"""Pyro's ELBO conventions for an estimator given as (loss estimate, surrogate loss).

Subclasses implement ``_loss_and_surrogate_loss(model, guide, args, kwargs)``, returning the
negative-ELBO estimate and a surrogate whose gradient is the estimator. Then, as in Pyro's own
ELBOs: ``loss_and_grads`` backpropagates the surrogate only when it has a gradient
(``torch_backward``) and returns the estimate; ``differentiable_loss`` returns a tensor whose
*value* is the estimate and whose gradient is the surrogate's, ``loss + (s - stop(s))``.
"""

from __future__ import annotations

import torch
from pyro.infer import ELBO
from pyro.infer.util import torch_backward, torch_item
from pyro.util import warn_if_nan


class SurrogateELBO(ELBO):
    """An ELBO defined by its (estimate, surrogate) pair; see the module docstring."""

    def _loss_and_surrogate_loss(self, model, guide, args, kwargs):
        raise NotImplementedError  # the estimator: each subclass says what it is

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Estimate the negative ELBO and backpropagate the surrogate (when it has a gradient)."""
        loss, surrogate = self._loss_and_surrogate_loss(model, guide, args, kwargs)
        torch_backward(surrogate, retain_graph=self.retain_graph)
        loss = torch_item(loss)
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The negative ELBO estimate as a tensor whose gradient is the surrogate's."""
        loss, surrogate = self._loss_and_surrogate_loss(model, guide, args, kwargs)
        if not torch.is_tensor(loss):
            loss = torch.tensor(float(loss))
        if torch.is_tensor(surrogate) and surrogate.requires_grad:
            return loss.detach() + (surrogate - surrogate.detach())
        return loss.detach()
