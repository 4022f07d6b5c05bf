"""The VAE's fast ELBOs: Pyro ELBO subclasses that skip the tracing for the VAE's own pair.

Each class is the Pyro ELBO it names (``isinstance`` holds; it plugs into ``pyro.infer.SVI`` and
:func:`pyro_reparam.train.fit`). Handed ``vae.model`` / ``vae.guide`` of *its* VAE, called as
``(x,)``, with no effect handler active but parameter captures (``SVI.step``'s
``poutine.trace(param_only=True)``), it computes loss and gradients straight from the networks
(:mod:`~pyro_reparam.models.vae_estimators`), after the same ``pyro.module`` / ``pyro.param``
calls as the guide and the model, so the step sees and updates the same parameters (outside any
Pyro handler, once the param store holds them, those calls are skipped: they would change
nothing; :mod:`~pyro_reparam.models.registration`). Anything
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

from pyro_reparam.estimators import DReG_ELBO
from pyro_reparam.models import vae_estimators as est
from pyro_reparam.models.nets import check_rows
from pyro_reparam.models.registration import Named, Registration
from pyro_reparam.models.vae import VAE

Estimate = Callable[[VAE, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]

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
        self._registration = Registration(vae.param_entries)

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

    def _fast(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float] | None:
        """``(loss, surrogate, loss value)`` of one step, or ``None`` where Pyro's validation
        should speak (on: data outside the support, or a non-finite loss)."""
        vae = self.vae
        check_rows(x, vae.x_dim, "VAE")
        checked = is_validation_enabled()
        ok = in_support(vae.likelihood, x) if checked else None  # read with the loss: one sync
        if self._registration.must_register():
            vae.register_guide_params()
            vae.register_model_params()
        loss, surrogate = type(self).estimate(vae, x, self.num_particles)
        value = torch_item(loss)
        if checked and not (math.isfinite(value) and (ok is None or bool(ok))):
            return None
        warn_if_nan(value, "loss")
        return loss, surrogate, value

    def step_params(self, model, guide, *args, **kwargs) -> Named | None:
        """The parameters a step on ``(model, guide, *args)`` trains, ``(param-store name,
        tensor)`` in name order, when the step is the fast one on the VAE's own pair and the
        store already holds them (:mod:`~pyro_reparam.models.registration`); ``None`` otherwise
        (trace the step for them, as ``SVI.step`` does)."""
        if not self._own(model, guide, args, kwargs):
            return None
        return self._registration.step_params()

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The negative ELBO estimate (no gradients)."""
        if self._own(model, guide, args, kwargs):
            with torch.no_grad():
                step = self._fast(args[0])
            if step is not None:
                return step[2]
        return super().loss(model, guide, *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """The negative ELBO estimate; backpropagates the surrogate."""
        if self._own(model, guide, args, kwargs):
            step = self._fast(args[0])
            if step is not None:
                torch_backward(step[1], retain_graph=self.retain_graph)
                return step[2]
        return super().loss_and_grads(model, guide, *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """A tensor valued as the loss estimate whose gradient is the surrogate's."""
        if self._own(model, guide, args, kwargs):
            step = self._fast(args[0])
            if step is not None:
                loss, surrogate, _ = step
                return loss.detach() + (surrogate - surrogate.detach())
        traced = getattr(super(), "differentiable_loss", None)
        if traced is None:
            raise NotImplementedError(
                f"{type(self).__name__}.differentiable_loss: Pyro's {_pyro_base(self)} has none "
                "for a model/guide other than the VAE's own; call loss_and_grads instead"
            )
        return traced(model, guide, *args, **kwargs)


def in_support(likelihood: str, x: torch.Tensor) -> torch.Tensor | None:
    """Whether every pixel lies in the likelihood's support, as a 0-dim bool tensor (``None``:
    nothing to check). Pyro's own checks, exactly, in two passes: ``x`` in {0, 1} iff
    ``x - x^2`` is zero everywhere (NaN and inf give NaN); in [0, 1] iff ``min >= 0, max <= 1``."""
    if likelihood == "gaussian" or x.numel() == 0:
        return None  # real support: a NaN shows as a non-finite loss
    if likelihood == "bernoulli":
        lo, hi = torch.aminmax(torch.addcmul(x, x, x, value=-1))
        return (lo == 0) & (hi == 0)
    lo, hi = torch.aminmax(x)
    return (lo >= 0) & (hi <= 1)


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
