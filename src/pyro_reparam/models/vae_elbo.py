"""The VAE's fast ELBOs: Pyro ELBO subclasses that skip the tracing for the VAE's own pair.

Each class is the Pyro ELBO it names (``isinstance`` holds; it plugs into ``pyro.infer.SVI`` and
:func:`pyro_reparam.train.fit`). Handed ``vae.model`` / ``vae.guide`` of *its* VAE, called as
``(x,)``, with no effect handler active but parameter captures (``SVI.step``'s
``poutine.trace(param_only=True)``), it computes loss and gradients straight from the networks
(:mod:`~pyro_reparam.models.vae_estimators`), after the same ``pyro.module`` / ``pyro.param``
calls as the guide and the model, so the step sees and updates the same parameters. Anything
else (another model or guide, a wrapped one, ``poutine.condition`` or any other handler, a VAE
subclass that overrides how the model is written) is the Pyro ELBO's own, traced computation.

Pyro's validation is kept where it says something: with validation on (Pyro's default), data
outside the likelihood's support, or a non-finite loss, hand the step to the traced ELBO, whose
distribution checks then raise their usual errors.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from pyro.infer import ELBO, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.util import is_validation_enabled, torch_backward, torch_item
from pyro.poutine.runtime import _PYRO_STACK
from pyro.poutine.trace_messenger import TraceMessenger
from pyro.util import warn_if_nan
from torch.distributions import constraints

from pyro_reparam.estimators import DReG_ELBO
from pyro_reparam.models import vae_estimators as est
from pyro_reparam.models.nets import check_rows
from pyro_reparam.models.vae import VAE

Estimate = Callable[[VAE, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]

_SUPPORT = {"bernoulli": constraints.boolean, "continuous_bernoulli": constraints.unit_interval}
_WRITTEN_BY_VAE = (
    "model",
    "guide",
    "prior",
    "posterior",
    "posterior_params",
    "likelihood_given",
    "register_guide_params",
    "register_model_params",
)


@functools.cache
def _plain(cls: type) -> bool:
    """Whether ``cls`` writes its model and guide as :class:`VAE` does (no override)."""
    return all(getattr(cls, name) is getattr(VAE, name) for name in _WRITTEN_BY_VAE)


def _only_param_captures() -> bool:
    return all(type(m) is TraceMessenger and m.param_only for m in _PYRO_STACK)


class _FastVAE:
    """Mixin before a Pyro ELBO in the bases: the fast path, else ``super()``'s method."""

    estimate: Estimate

    def __init__(self, vae: VAE, **kwargs):
        if not isinstance(vae, VAE):
            raise TypeError(
                f"{type(self).__name__}: vae must be a pyro_reparam VAE, got {type(vae).__name__}"
            )
        super().__init__(**kwargs)
        self.vae = vae

    def _own(self, model, guide, args, kwargs) -> bool:
        """Whether this call is the VAE's own pair on ``(x,)`` with nothing but param captures."""
        vae = self.vae
        return (
            len(args) == 1
            and not kwargs
            and getattr(model, "__self__", None) is vae
            and getattr(guide, "__self__", None) is vae
            and getattr(model, "__func__", None) is VAE.model
            and getattr(guide, "__func__", None) is VAE.guide
            and _plain(type(vae))
            and _only_param_captures()
        )

    def _fast(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(loss, surrogate)`` of one step, or ``None`` where Pyro's validation should speak
        (data outside the support; checked only with validation on)."""
        vae = self.vae
        check_rows(x, vae.x_dim, "VAE")
        support = _SUPPORT.get(vae.likelihood)
        if support is not None and is_validation_enabled() and not bool(support.check(x).all()):
            return None
        vae.register_guide_params()
        vae.register_model_params()
        return type(self).estimate(vae, x, self.num_particles)

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The negative ELBO estimate (no gradients)."""
        if self._own(model, guide, args, kwargs):
            with torch.no_grad():
                pair = self._fast(args[0])
            if pair is not None and _finite_or_unchecked(value := torch_item(pair[0])):
                warn_if_nan(value, "loss")
                return value
        return super().loss(model, guide, *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """The negative ELBO estimate; backpropagates the surrogate."""
        if self._own(model, guide, args, kwargs):
            pair = self._fast(args[0])
            if pair is not None and _finite_or_unchecked(value := torch_item(pair[0])):
                torch_backward(pair[1], retain_graph=self.retain_graph)
                warn_if_nan(value, "loss")
                return value
        return super().loss_and_grads(model, guide, *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """A tensor valued as the loss estimate whose gradient is the surrogate's."""
        if self._own(model, guide, args, kwargs):
            pair = self._fast(args[0])
            if pair is not None and _finite_or_unchecked(torch_item(pair[0])):
                loss, surrogate = pair
                return loss.detach() + (surrogate - surrogate.detach())
        traced = getattr(super(), "differentiable_loss", None)
        if traced is None:
            raise NotImplementedError(
                f"{type(self).__name__}.differentiable_loss: Pyro's {_pyro_base(self)} has none "
                "for a model/guide other than the VAE's own; call loss_and_grads instead"
            )
        return traced(model, guide, *args, **kwargs)


def _finite_or_unchecked(value: float) -> bool:
    """A non-finite loss goes to the traced ELBO when validation can say why."""
    return math.isfinite(value) or not is_validation_enabled()


def _pyro_base(elbo) -> str:
    return next(c.__name__ for c in type(elbo).__mro__[1:] if c.__module__.startswith("pyro."))


class VAEMeanFieldELBO(_FastVAE, TraceMeanField_ELBO):
    """``TraceMeanField_ELBO`` (analytic KL), fast for the VAE's own pair."""

    estimate = staticmethod(est.analytic)


class VAETraceELBO(_FastVAE, Trace_ELBO):
    """``Trace_ELBO`` (Monte Carlo KL), fast for the VAE's own pair."""

    estimate = staticmethod(est.monte_carlo)


class VAEIWAE_ELBO(_FastVAE, RenyiELBO):
    """``RenyiELBO(alpha=0)`` (the IWAE bound and its plain gradient), fast for the VAE's pair."""

    estimate = staticmethod(est.iwae)

    def __init__(self, vae: VAE, **kwargs):
        super().__init__(vae, alpha=0.0, **kwargs)


class VAEDReG_ELBO(_FastVAE, DReG_ELBO):
    """``DReG_ELBO`` (the IWAE bound, doubly reparameterized encoder gradient), fast for the
    VAE's own pair."""

    estimate = staticmethod(est.dreg)


def vae_elbo(vae: VAE, num_particles: int = 1, *, traced: bool = False) -> ELBO:
    """The ELBO ``vae`` is configured for: fast (default) or Pyro's own (``traced=True``)."""
    if not isinstance(num_particles, int) or isinstance(num_particles, bool) or num_particles < 1:
        raise ValueError(f"VAE.elbo: num_particles must be an integer >= 1, got {num_particles!r}")
    k = vae.iwae_particles
    if k and vae.iwae_gradient == "dreg":
        opts = {"num_particles": k, "max_plate_nesting": 1}
        return DReG_ELBO(**opts) if traced else VAEDReG_ELBO(vae, **opts)
    opts = {"max_plate_nesting": 1, "vectorize_particles": True}
    if k:
        opts["num_particles"] = k
        return RenyiELBO(alpha=0.0, **opts) if traced else VAEIWAE_ELBO(vae, **opts)
    opts["num_particles"] = num_particles
    if vae.kl_estimator == "analytic":
        return TraceMeanField_ELBO(**opts) if traced else VAEMeanFieldELBO(vae, **opts)
    return Trace_ELBO(**opts) if traced else VAETraceELBO(vae, **opts)
