"""Local reparameterization (Kingma, Salimans & Welling 2015) as a Pyro effect handler.

A layer ``a = x W^T + b`` whose weights the guide draws from a mean-field Normal,
``W_oi ~ N(mu_oi, sigma_oi^2)``, ``b_o ~ N(m_o, s_o^2)``, has, for one example ``x`` (a row),
Gaussian pre-activations, independent over the outputs ``o``::

    a_o ~ N(mean_o, var_o),   mean = x mu^T + m,   var = x^2 (sigma^2)^T + s^2.

Local reparameterization draws ``a = mean + sqrt(var) * eps`` with ``eps ~ N(0, I)`` fresh for
every example and output, instead of one ``W`` for the whole batch. Each example's
distribution (through all layers) is that of weight sampling, so every term of
``sum_n E_q[log p(y_n | x_n, W)]`` keeps its expectation; examples become independent, which
removes the between-example covariance of the gradient estimate (lower variance).

Shapes: ``x (..., in)``, ``W (out, in)``, ``b (out,)`` -> ``(..., out)``, every row of ``x`` one
example. Weights with batch dims (vectorized particles), ``W (..., out, in)``, are applied as
the batched ``x @ W^T + b[..., None, :]`` with ``x (..., B, in)``.

:class:`WeightDrawMessenger` is the mechanism shared with
:class:`~pyro_reparam.estimators.flipout.Flipout`: it records the guide's Normal draws by the
identity of the sampled tensor and, while active, replaces ``torch.nn.functional`` ops (which
``nn.Linear``/``nn.Conv*d`` and honest models call) so that a call on a recorded weight is
computed from the draw's ``loc``/``scale`` instead of its value.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.poutine.messenger import Messenger
from torch import Tensor

_TORCH_LINEAR = F.linear  # torch's own op, captured before any handler replaces F.linear


@dataclass
class NormalDraw:
    """A recorded guide draw: its site's name and the ``loc``/``scale`` of the Normal it was
    drawn from (each of the draw's shape); ``uses``: reparameterized calls in this run."""

    name: str
    loc: Tensor
    scale: Tensor
    uses: int = 0


def _normal(fn) -> dist.Normal | None:
    """The Normal under ``Independent`` wrappers (``.to_event``), or ``None``."""
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return fn if isinstance(fn, torch.distributions.Normal) else None


def affine(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x W^T + b``: torch's ``F.linear`` for ``W (out, in)``; for batched ``W (..., out, in)``
    the matmul broadcast ``x @ W^T + b[..., None, :]`` (``x (..., B, in)``)."""
    if weight.dim() == 2 and (bias is None or bias.dim() <= 1):
        return _TORCH_LINEAR(x, weight, bias)
    out = x @ weight.transpose(-1, -2)
    return out if bias is None else out + bias.unsqueeze(-2)


def local_linear(
    x: Tensor,
    weight_loc: Tensor,
    weight_scale: Tensor,
    bias_loc: Tensor | None = None,
    bias_scale: Tensor | None = None,
) -> Tensor:
    """One draw of ``x W^T + b`` for ``W ~ N(weight_loc, weight_scale^2)``, ``b ~ N(bias_loc,
    bias_scale^2)`` elementwise: ``mean + sqrt(var) * eps`` with ``mean = x mu^T + m``,
    ``var = x^2 (sigma^2)^T + s^2`` and ``eps`` fresh per example and output. A ``None`` bias
    scale is a fixed bias; shapes as in :func:`affine`."""
    mean = affine(x, weight_loc, bias_loc)
    var = affine(x.pow(2), weight_scale.pow(2), None if bias_scale is None else bias_scale.pow(2))
    std = var.clamp(min=torch.finfo(var.dtype).tiny).sqrt()  # no infinite gradient at var = 0
    return mean + std * torch.randn_like(mean)


class WeightDrawMessenger(Messenger):
    """Records Normal guide draws and, while active, routes the ``torch.nn.functional`` ops named
    in :attr:`ops` to an estimator when their ``weight`` is a recorded draw.

    Recording (``_pyro_post_sample``): a sample site whose ``fn`` is a Normal (possibly in
    ``Independent``) and whose value was drawn below this handler (not observed, and not given
    by a ``replay``/``condition`` inside it, so the model's replayed sites, whose ``fn`` is the
    prior, are skipped); also a ``Delta`` over a recorded draw (``AutoNormal``'s model-site
    value over its auxiliary Normal). Records are keyed by the tensor's identity and hold a
    weak reference to it: a record lives as long as its draw, so one instance may wrap the
    guide and the model separately and a handler around a long loop holds no old draws.

    While active, each op ``F.<name>(input, weight, bias, ...)`` with a recorded ``weight`` is
    ``ops[name](self, original, input, weight_draw, bias, ...)`` (``bias``: a recorded
    :class:`NormalDraw`, a fixed tensor or ``None``); any other call goes to the original op.
    A draw may enter one such call per entry of the handler: a second call would get
    independent noise, which is not the joint distribution of one shared weight, so it
    raises. Ops are restored on exit, exceptions included. Replacing module attributes is
    process-wide: do not run other threads' models while a handler is active.
    """

    ops: dict[str, Callable[..., Tensor]] = {}

    def __init__(self) -> None:
        super().__init__()
        self._draws: dict[int, tuple[weakref.ref, NormalDraw]] = {}
        self._fresh: set[int] = set()
        self._originals: dict[str, Callable] = {}

    def __enter__(self):
        entered = super().__enter__()  # raises if this instance is already active
        for _, draw in self._draws.values():
            draw.uses = 0
        for name in self.ops:
            self._originals[name] = getattr(F, name)
            setattr(F, name, self._replacement(name))
        return entered

    def __exit__(self, exc_type, exc_value, traceback):
        try:
            return super().__exit__(exc_type, exc_value, traceback)
        finally:
            self._restore()
            self._fresh.clear()

    def _restore(self) -> None:
        for name, original in self._originals.items():
            setattr(F, name, original)
        self._originals.clear()

    # -- recording -----------------------------------------------------------------------------
    def _pyro_sample(self, msg) -> None:
        if msg["value"] is None and not msg["is_observed"]:
            self._fresh.add(id(msg))

    def _pyro_post_sample(self, msg) -> None:
        if id(msg) not in self._fresh:
            return
        self._fresh.discard(id(msg))
        value = msg["value"]
        if msg["is_observed"] or self.draw_of(value) is not None or not isinstance(value, Tensor):
            return
        normal = _normal(msg["fn"])
        if normal is not None:
            loc, scale = normal.loc.expand_as(value), normal.scale.expand_as(value)
            self._remember(value, NormalDraw(msg["name"], loc, scale))
        elif isinstance(msg["fn"], dist.Delta):
            draw = self.draw_of(msg["fn"].v)
            if draw is not None and draw.loc.shape == value.shape:
                self._remember(value, draw)

    def _remember(self, value: Tensor, draw: NormalDraw) -> None:
        key = id(value)
        ref = weakref.ref(value, functools.partial(self._forget, key))
        self._draws[key] = (ref, draw)

    def _forget(self, key: int, ref: weakref.ref) -> None:
        if self._draws.get(key, (None,))[0] is ref:
            del self._draws[key]

    def used_sites(self) -> list[str]:
        """The sites whose draws entered an estimated op during the last entry of the handler."""
        return sorted({draw.name for _, draw in self._draws.values() if draw.uses})

    def draw_of(self, value) -> NormalDraw | None:
        """The recorded draw whose sampled tensor is ``value`` (by identity), or ``None``."""
        entry = self._draws.get(id(value)) if isinstance(value, Tensor) else None
        return entry[1] if entry is not None and entry[0]() is value else None

    # -- the replaced ops ----------------------------------------------------------------------
    def _replacement(self, name: str) -> Callable[..., Tensor]:
        original, estimator = self._originals[name], self.ops[name]

        @functools.wraps(original)
        def op(input, weight, bias=None, *args, **kwargs):
            draw = self.draw_of(weight)
            if draw is None:
                return original(input, weight, bias, *args, **kwargs)
            self._use(draw, name)
            bias_draw = self.draw_of(bias)
            if bias_draw is not None:
                self._use(bias_draw, name)
            bias = bias if bias_draw is None else bias_draw
            return estimator(self, original, input, draw, bias, *args, **kwargs)

        return op

    def _use(self, draw: NormalDraw, op: str) -> None:
        draw.uses += 1
        if draw.uses > 1:
            raise RuntimeError(
                f"{type(self).__name__}: the draw of site {draw.name!r} enters a second "
                f"F.{op} call in one run. Each call would get its own noise, which is not the "
                "joint distribution of one shared weight; sample a weight per call, or run this "
                "model without the handler (plain weight sampling)"
            )

    def check_batched(self, x: Tensor, draw: NormalDraw, op: str) -> None:
        """Batched weights ``(..., out, in)`` need ``x (..., B, in)``; say so, naming the site."""
        if draw.loc.dim() > 2 and x.dim() < 2:
            raise ValueError(
                f"{type(self).__name__}: site {draw.name!r} has a weight with batch dims "
                f"{tuple(draw.loc.shape[:-2])} (vectorized particles or a plate) but F.{op} got "
                f"an input of shape {tuple(x.shape)}; batched weights need x of shape (..., B, in)"
            )


def bias_moments(bias) -> tuple[Tensor | None, Tensor | None]:
    """``(loc, scale)`` of a bias: a recorded draw, a fixed tensor (scale ``None``) or ``None``."""
    return (bias.loc, bias.scale) if isinstance(bias, NormalDraw) else (bias, None)


def _local_linear_op(handler, original, x, weight: NormalDraw, bias) -> Tensor:
    handler.check_batched(x, weight, "linear")
    return local_linear(x, weight.loc, weight.scale, *bias_moments(bias))


class LocalReparameterization(WeightDrawMessenger):
    """Local reparameterization of ``F.linear`` on the guide's Normal weight draws.

    ``with LocalReparameterization(): svi.step(x, y)`` (or around ``elbo.loss``): the guide's
    Normal draws are recorded, and each ``F.linear(x, W, b)`` in the model with a recorded
    ``W`` returns :func:`local_linear` of ``W``'s (and, when recorded, ``b``'s) Normal; a fixed
    or unrecorded ``b`` is added as it is. Any other ``F.linear`` is torch's own.

    Valid where the likelihood sums over the rows of ``x`` (each row one example) and each
    weight enters one ``F.linear`` call (checked). Convolutions are not replaced (noise per
    output position would not be the joint of a shared kernel within an example): use
    :class:`~pyro_reparam.estimators.flipout.Flipout`. Outside an ELBO the outputs have the
    per-example marginals of weight sampling, not its correlations across examples: predict
    without the handler.
    """

    ops = {"linear": _local_linear_op}
