"""The ELBO of a :class:`~pyro_reparam.models.bnn.network.BayesianMLP` under each estimator.

``ELBO = E_q[sum_batch N / B * log p(y | x, W)] - KL(q || p)`` with the KL in closed form. The
likelihood term is estimated by weight sampling (``"meanfield"``), local reparameterization
(``"local"``) or Flipout (``"flipout"``): the same expectation, different variances. Two
implementations:

* :class:`HandledTraceMeanField_ELBO`: Pyro's ``TraceMeanField_ELBO`` on the network's honest
  ``model``/``guide``, evaluated under the estimator's effect handler
  (:class:`~pyro_reparam.estimators.LocalReparameterization`,
  :class:`~pyro_reparam.estimators.Flipout`).
* :class:`BayesianMLPELBO`: the same estimator computed directly from the module, without
  Pyro's per-step tracing: the closed-form KL, each local-reparameterization layer of a batch
  ``(B, in)`` and the heteroscedastic likelihood as one autograd node each, its gradient written
  out (:mod:`~pyro_reparam.models.bnn.kernels`); Flipout with the handler's own function
  (:func:`~pyro_reparam.estimators.flipout.flipout_linear`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING

import pyro
import torch
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.util import is_validation_enabled
from pyro.poutine.messenger import Messenger
from pyro.util import warn_if_nan
from torch.distributions.utils import _standard_normal

from pyro_reparam.estimators import Flipout, LocalReparameterization
from pyro_reparam.estimators.flipout import flipout_linear
from pyro_reparam.estimators.local_reparam import local_linear
from pyro_reparam.models.bnn.kernels import HeteroscedasticNormalLogLik, LocalLinear, NormalKL
from pyro_reparam.models.registration import Named, Registration

if TYPE_CHECKING:
    from pyro_reparam.models.bnn.network import BayesianMLP

HANDLERS: dict[str, Callable[[], Messenger] | None] = {
    "meanfield": None,
    "local": LocalReparameterization,
    "flipout": Flipout,
}
_LAYER_OPS = {"local": local_linear, "flipout": flipout_linear}


class HandledTraceMeanField_ELBO(TraceMeanField_ELBO):
    """``TraceMeanField_ELBO`` whose every evaluation (``loss``, ``loss_and_grads``,
    ``differentiable_loss``) runs under a fresh ``handler()`` (``None``: none), so that the
    guide's draws are recorded and the model's ``F.linear`` calls estimated by it."""

    def __init__(self, handler: Callable[[], Messenger] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.handler = handler
        self._active = False

    @contextmanager
    def _handled(self) -> Iterator[None]:
        if self._active or self.handler is None:  # loss_and_grads calls differentiable_loss
            yield
            return
        self._active = True
        try:
            with self.handler():
                yield
        finally:
            self._active = False

    def loss(self, model, guide, *args, **kwargs) -> float:
        with self._handled():
            return super().loss(model, guide, *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        with self._handled():
            return super().differentiable_loss(model, guide, *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        with self._handled():
            return super().loss_and_grads(model, guide, *args, **kwargs)


def traced_elbo(estimator: str, num_particles: int = 1) -> HandledTraceMeanField_ELBO:
    """Pyro's ``TraceMeanField_ELBO`` under the handler of ``estimator`` (see :data:`HANDLERS`)."""
    return HandledTraceMeanField_ELBO(HANDLERS[estimator], num_particles=num_particles)


def log_likelihood_draw(bnn: BayesianMLP, x, y, estimator: str, q=None) -> torch.Tensor:
    """One differentiable draw of ``sum_batch log p(y | x, W)``, the likelihood term as
    ``estimator`` estimates it (``q``: each layer's ``bnn._q_params(l)``, when computed
    already). Weight sampling draws every layer's ``(W, b)`` first, in the guide's order, so
    that with one seed it sees the guide's draws."""
    layers = range(len(bnn.sizes) - 1)
    q = [bnn._q_params(l) for l in layers] if q is None else q
    if estimator == "meanfield":
        draws = [(_normal_draw(p["weight_loc"], p["weight_scale"]),
                  _normal_draw(p["bias_loc"], p["bias_scale"])) for p in q]  # fmt: skip
        f = bnn._forward(x, draws)
    else:
        op = _LAYER_OPS[estimator]
        f = bnn._network(x, [partial(op, **p) for p in q])
    return _log_likelihood_sum(bnn, f, y)


def _layer_tensors(bnn: BayesianMLP) -> list[tuple[torch.Tensor, ...]]:
    """Per layer ``(loc, raw, scale, bias_loc, bias_raw, bias_scale)``, the scales
    ``softplus(raw)`` without gradient: the inputs of :mod:`~pyro_reparam.models.bnn.kernels`."""
    lists = (bnn.locs, bnn.raw_scales, bnn.bias_locs, bnn.bias_raw_scales)
    # a ParameterList's entries in order, without its per-index attribute lookups
    locs, raws, bias_locs, bias_raws = (list(pl._parameters.values()) for pl in lists)
    with torch.no_grad():
        scales = [torch.nn.functional.softplus(r) for r in raws + bias_raws]
    n = len(locs)
    return list(zip(locs, raws, scales[:n], bias_locs, bias_raws, scales[n:], strict=True))


def _flat_priors(bnn: BayesianMLP) -> list[float]:
    """The prior scale of each weight and bias tensor, in :func:`_layer_tensors`' order."""
    return [s for pair in bnn._prior_floats() for s in pair]


def _local_log_likelihood_draw(bnn: BayesianMLP, x, y, layers) -> torch.Tensor:
    """:func:`log_likelihood_draw` under ``"local"`` for inputs ``x (B, in)``, each layer one
    :class:`~pyro_reparam.models.bnn.kernels.LocalLinear` node."""
    f = bnn._network(x, [partial(_local_layer, tensors=t) for t in layers])
    return _log_likelihood_sum(bnn, f, y)


def _log_likelihood_sum(bnn: BayesianMLP, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``sum_batch log p(y | f)`` from the raw outputs ``f``: the heteroscedastic Normal as one
    :class:`~pyro_reparam.models.bnn.kernels.HeteroscedasticNormalLogLik` node where ``y`` has
    the shape of its ``loc``, otherwise the likelihood's ``log_prob``."""
    if bnn.task == "regression" and bnn.noise == "heteroscedastic" and f.dim() == 2:
        single = bnn.out_features == 1
        if y.shape == (f.shape[:-1] if single else (*f.shape[:-1], bnn.out_features)):
            return HeteroscedasticNormalLogLik.apply(f, y.unsqueeze(-1) if single else y)
    return bnn._likelihood(bnn._mean_output(f), validate=False).log_prob(y).sum()


def _local_layer(h: torch.Tensor, tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return LocalLinear.apply(h, *tensors)


def _normal_draw(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``Normal(loc, scale).rsample()``: the same draw from the global RNG, the same value."""
    return loc + _standard_normal(loc.shape, dtype=loc.dtype, device=loc.device) * scale


class BayesianMLPELBO(TraceMeanField_ELBO):
    """``TraceMeanField_ELBO`` of a :class:`BayesianMLP`, computed without tracing.

    ``loss = KL(q || p) - (1/K) sum_k N / B * sum_batch log p(y | x, W_k)`` with the KL in
    closed form and the likelihood term drawn by :func:`log_likelihood_draw` under
    ``estimator`` (default: the network's ``guide`` option at construction). Objective and
    gradient estimator are those of :func:`traced_elbo` on ``bnn.model``/``bnn.guide``
    (checked in value and gradient under the same noise by the tests); what is skipped is
    Pyro's per-step tracing of every weight site, which dominates the step time of a small
    network, and most of autograd's per-node work (:mod:`~pyro_reparam.models.bnn.kernels`).
    It plugs into ``SVI`` like any ELBO; the ``model``/``guide`` handed to ``loss`` /
    ``loss_and_grads`` must be the network's own (they are not run, the network is), called as
    ``(x, y)`` or ``(x, y, num_data=N)``; ``num_data`` given here applies when the call has
    none. With Pyro's validation on, a step whose loss is not finite is handed to the traced
    ELBO on that ``model``/``guide``, so that a NaN target raises Pyro's error for site ``"y"``.
    """

    def __init__(
        self,
        bnn: BayesianMLP,
        num_particles: int = 1,
        num_data: int | None = None,
        estimator: str | None = None,
    ):
        super().__init__(num_particles=num_particles)
        self.bnn, self.num_data = bnn, num_data
        self._registration = Registration(bnn.param_entries)
        self.estimator = bnn.guide_kind if estimator is None else estimator
        if self.estimator not in HANDLERS:
            raise ValueError(
                f"BayesianMLPELBO: estimator must be one of {tuple(HANDLERS)}, "
                f"got {self.estimator!r}"
            )

    def _differentiable_loss(self, x, y=None, num_data=None) -> torch.Tensor:
        num_data = self.num_data if num_data is None else num_data
        if y is None:
            raise ValueError("BayesianMLPELBO: the ELBO needs the observed targets y")
        if self._registration.must_register():
            pyro.module(self.bnn.name, self.bnn)  # SVI collects the parameters from here
        scale = 1.0 if num_data is None else num_data / x.shape[0]
        bnn, k = self.bnn, self.num_particles
        layers = _layer_tensors(bnn)
        kl = NormalKL.apply(_flat_priors(bnn), *[t for layer in layers for t in layer])
        if self.estimator == "local" and x.dim() == 2:
            draw = partial(_local_log_likelihood_draw, bnn, x, y, layers)
        else:
            q = [bnn._q_params(l) for l in range(len(bnn.sizes) - 1)]  # once for all draws
            draw = partial(log_likelihood_draw, bnn, x, y, self.estimator, q)
        log_lik = draw()
        for _ in range(k - 1):
            log_lik = log_lik + draw()
        return kl - (scale / k) * log_lik

    def step_params(self, model=None, guide=None, *args, **kwargs) -> Named | None:
        """The parameters a step trains, ``(param-store name, tensor)`` in name order, when the
        param store holds the network's parameters under ``pyro.module``'s names (``None``
        before that; :mod:`~pyro_reparam.models.registration`). :func:`pyro_reparam.train.fit`
        steps with these instead of tracing the step for its parameters; the step then
        registers nothing (it calls ``pyro.module`` only under a Pyro handler, as
        ``pyro.infer.SVI`` runs it, or while the store lacks them)."""
        return self._registration.step_params()

    def _validated(self, loss: torch.Tensor) -> float | None:
        """``loss.item()``, or ``None`` where Pyro's validation should speak: with it on (Pyro's
        default), a non-finite loss (a NaN target, say) goes to the traced ELBO, whose checks
        raise their usual error naming the site."""
        value = loss.item()
        if is_validation_enabled() and not math.isfinite(value):
            return None
        warn_if_nan(value, "loss")
        return value

    def _traced(self, how: str, model, guide, args, kwargs):
        """The traced ELBO's ``how`` on the handed pair, with this ELBO's ``num_data`` when the
        call has none and the pair is the network's own (which takes it)."""
        own = getattr(model, "__self__", None) is self.bnn
        if self.num_data is not None and own and "num_data" not in kwargs and len(args) < 3:
            kwargs = {**kwargs, "num_data": self.num_data}
        elbo = traced_elbo(self.estimator, self.num_particles)
        return getattr(elbo, how)(model, guide, *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        loss = self._differentiable_loss(*args, **kwargs)
        if self._validated(loss) is None:
            return self._traced("differentiable_loss", model, guide, args, kwargs)
        return loss

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            value = self._validated(self._differentiable_loss(*args, **kwargs))
        return self._traced("loss", model, guide, args, kwargs) if value is None else value

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self._differentiable_loss(*args, **kwargs)
        value = self._validated(loss)
        if value is None:
            return self._traced("loss_and_grads", model, guide, args, kwargs)
        loss.backward()
        return value
