"""``watch_sampling``: catch the draw that cuts the gradient, where it happens.

The classic mistake: a Bayesian layer draws its weights with ``Normal(mu, sigma).sample()``.
``sample()`` runs under ``torch.no_grad()``, so ``w`` carries no gradient to ``mu`` and ``sigma``
and the loss either has no gradient at all (``element 0 of tensors does not require grad``) or,
worse, trains everything but the weight distribution. ``rsample()`` draws ``w = mu + sigma *
eps`` instead, whose gradient is the pathwise estimator of ``grad E_q[f(w)]``.

Inside ``with pr.watch_sampling():`` every ``.sample()`` of a distribution that *has*
``rsample`` and whose parameters require grad (with grad mode on) is reported at the line of
the user's code that called it, with the four ways out. Draws made by torch or Pyro themselves
(``pyro.sample`` uses ``rsample`` where it exists) and draws under ``torch.no_grad()`` are left
alone. A ``backward()`` that fails for lack of a gradient inside the block names the draws
that caused it.
"""

from __future__ import annotations

import contextlib
import linecache
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributions as tdist

from pyro_reparam.families import NotReparameterizedError, reparam_info

ACTIONS = ("raise", "warn")
_LIBRARY_DIRS = tuple(
    os.path.dirname(m.__file__) + os.sep
    for m in (torch, sys.modules.get("pyro"), sys.modules[__name__.split(".")[0]])
    if m is not None and getattr(m, "__file__", None)
)


class SampledWithoutGradientError(NotReparameterizedError):
    """A reparameterizable distribution with trainable parameters was drawn with ``.sample()``."""


@dataclass
class SamplingReport:
    """The ``.sample()`` calls seen inside :func:`watch_sampling` that cut a gradient."""

    sites: list[str] = field(default_factory=list)


def fix_options(fn: tdist.Distribution) -> list[str]:
    """The four ways to get a gradient through a draw from ``fn``."""
    info = reparam_info(fn)
    name = type(fn).__name__
    pathwise = (
        f"pathwise: call .rsample() ({name} has it: {info.note or 'reparameterized'}), or "
        "draw it with pyro.sample, which uses rsample"
        if fn.has_rsample
        else "pathwise: a reparameterizable family instead (pyro_reparam.families_table())"
    )
    return [
        pathwise,
        "score function: keep .sample() inside a Pyro guide and train with "
        "pyro_reparam.route(model, guide, ...).elbo() (baselines, Rao-Blackwellization)",
        "relaxation: for a discrete family, a continuous relaxation such as "
        "RelaxedBernoulliStraightThrough (biased)",
        'enumeration: for a small discrete support, infer={"enumerate": "parallel"} with '
        "TraceEnum_ELBO (exact)",
    ]


def _user_frame():
    """The innermost frame outside torch, Pyro and this package (the user's call site)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(_LIBRARY_DIRS):
        frame = frame.f_back
    return frame


def _trainable(fn: tdist.Distribution) -> list[str]:
    return [
        k
        for k, v in vars(fn).items()
        if isinstance(v, torch.Tensor) and v.requires_grad and not k.startswith("_")
    ]


def _describe(fn: tdist.Distribution, params: list[str], frame) -> str:
    where = "an unknown place"
    if frame is not None:
        code = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
        where = f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
        where += f" (`{code}`)" if code else ""
    options = "; ".join(f"({i}) {o}" for i, o in enumerate(fix_options(fn), 1))
    return (
        f"{type(fn).__name__}.sample() at {where} draws without a gradient, although its "
        f"parameters {params} require grad: a loss computed from the draw gets no gradient for "
        f"them. Options: {options}."
    )


def _sample_classes() -> Iterator[type]:
    """Every distribution class that defines its own ``sample`` (and the base class)."""
    seen, todo = set(), [tdist.Distribution]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        todo.extend(cls.__subclasses__())
        if "sample" in cls.__dict__:
            yield cls


@contextlib.contextmanager
def watch_sampling(action: str = "raise") -> Iterator[SamplingReport]:
    """Report ``.sample()`` calls that cut a gradient, at the user's line of code.

    :param action: ``"raise"`` a :class:`SampledWithoutGradientError` at the call, or
        ``"warn"`` once per call site (and name the calls if a ``backward()`` then fails).
    :returns: a :class:`SamplingReport` listing the call sites seen.
    """
    if action not in ACTIONS:
        raise ValueError(f"watch_sampling: action must be one of {ACTIONS}, got {action!r}")
    report = SamplingReport()
    originals = {cls: cls.__dict__["sample"] for cls in _sample_classes()}

    def wrap(original):
        def sample(self, *args, **kwargs):
            if torch.is_grad_enabled() and self.has_rsample:
                params = _trainable(self)
                frame = _user_frame() if params else None
                if params and frame is not None:
                    _flag(self, params, frame)
            return original(self, *args, **kwargs)

        return sample

    def _flag(fn, params, frame):
        message = _describe(fn, params, frame)
        site = f"{frame.f_code.co_filename}:{frame.f_lineno}"
        if action == "raise":
            raise SampledWithoutGradientError(message)
        if site not in report.sites:
            report.sites.append(site)
            warnings.warn(message, UserWarning, stacklevel=4)

    backward = torch.Tensor.backward

    def checked_backward(tensor, *args, **kwargs):
        try:
            return backward(tensor, *args, **kwargs)
        except RuntimeError as err:
            if "does not require grad" not in str(err) or not report.sites:
                raise
            raise SampledWithoutGradientError(
                f"backward(): the loss has no gradient; it depends on .sample() draws at "
                f"{report.sites}, which carry none. Draw them with .rsample() (see the warnings "
                "above for all four options)"
            ) from err

    try:
        for cls, original in originals.items():
            cls.sample = wrap(original)
        torch.Tensor.backward = checked_backward
        yield report
    finally:
        for cls, original in originals.items():
            cls.sample = original
        torch.Tensor.backward = backward
