"""Baselines (control variates) for the score-function term of one guide site, as modules.

For a non-reparameterized site ``z`` with downstream cost ``c`` (shape: the site's batch shape,
particles outermost) the gradient term is ``E_q[(c - b) grad log q(z)]``; it stays unbiased
when ``b`` does not depend on ``z``. Each baseline is an ``nn.Module`` whose state (running
averages, network weights) lives in its buffers and parameters, so a ``state_dict`` carries
it. ``forward(cost, options)`` returns ``(b, loss)``: ``b`` detached, of ``cost``'s shape or
broadcastable to it, and an extra loss that trains the baseline (``0.0`` when there is none).

``options`` are Pyro's keys of a guide site's ``infer={"baseline": {...}}``, parsed by
:meth:`SiteOptions.parse`, which refuses unknown keys as ``TraceGraph_ELBO`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

PYRO_KEYS = (
    "use_decaying_avg_baseline",
    "baseline_beta",
    "nn_baseline",
    "nn_baseline_input",
    "baseline_value",
)


@dataclass(frozen=True)
class SiteOptions:
    """A guide site's ``infer["baseline"]`` dict, checked."""

    nn_baseline: nn.Module | None = None
    nn_baseline_input: torch.Tensor | None = None
    use_decaying_avg_baseline: bool = False
    baseline_beta: float | None = None
    baseline_value: torch.Tensor | float | None = None

    @classmethod
    def parse(cls, site: str, options: Mapping[str, Any]) -> SiteOptions:
        unknown = sorted(set(options) - set(PYRO_KEYS))
        if unknown:
            raise ValueError(
                f"Unrecognized baseline options {unknown} at site {site!r}; "
                f'infer={{"baseline": ...}} takes {", ".join(PYRO_KEYS)}'
            )
        parsed = cls(**options)
        net, x = parsed.nn_baseline, parsed.nn_baseline_input
        if net is not None and not isinstance(net, nn.Module):
            raise TypeError(
                f"site {site!r}: nn_baseline must be a torch.nn.Module (its parameters are "
                f"trained by the SVI optimizer and saved in the ELBO's state_dict), got "
                f"{type(net).__name__}; wrap the function in an nn.Module"
            )
        if (net is None) != (x is None):
            raise ValueError(
                f"site {site!r}: nn_baseline and nn_baseline_input go together; give both"
            )
        if net is not None and parsed.baseline_value is not None:
            raise ValueError(f"site {site!r}: give either nn_baseline or baseline_value, not both")
        if not isinstance(parsed.use_decaying_avg_baseline, bool):
            raise TypeError(f"site {site!r}: use_decaying_avg_baseline must be True or False")
        beta = parsed.baseline_beta
        if beta is not None:
            check_beta(beta, f"site {site!r}: baseline_beta")
        return parsed


def check_beta(beta: float, what: str) -> None:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta <= 1.0:
        raise ValueError(f"{what} must be a number in [0, 1], got {beta!r}")


class Baseline(nn.Module):
    """``b`` for one site: ``forward(cost, options) -> (b, loss)``; ``kind`` names it."""

    kind: ClassVar[str]

    def __init__(self, site: str):
        super().__init__()
        self.site = site

    def summary(self) -> float | None:
        """A scalar for training histories (running averages), else ``None``."""
        return None


class NoBaseline(Baseline):
    """The bare score function: ``b = 0``."""

    kind = "none"

    def forward(self, cost: torch.Tensor, options: SiteOptions):
        return 0.0, 0.0


class DecayingAverage(Baseline):
    """A running average of the mean downstream cost, one scalar per site.

    ``b_t = beta b_{t-1} + (1 - beta) mean(c_t)``, ``b_1 = mean(c_1)``,

    where ``mean(c_t)`` averages over data and particles. Step ``t`` subtracts ``b_{t-1}``
    (``0`` at the first step), which no draw of this step influenced: unbiased. Unlike Pyro's
    average (one value per batch position), a smaller last minibatch or shuffled batches
    neither crash nor mislead it. ``beta = 1`` freezes it at the first step's mean.

    State: buffers ``value`` (``b_{t}``) and ``steps`` (``t``).
    """

    kind = "decaying"

    def __init__(self, site: str, beta: float = 0.9, dtype=None, device=None):
        super().__init__(site)
        check_beta(beta, f"site {site!r}: baseline_beta")
        self.beta = float(beta)
        self.register_buffer("value", torch.zeros((), dtype=dtype, device=device))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long, device=device))

    def forward(self, cost: torch.Tensor, options: SiteOptions):
        old = self.value.clone()
        mean = cost.detach().mean().to(self.value.dtype)
        with torch.no_grad():  # weight 1 on the first step, 1 - beta after (no host sync)
            weight = torch.where(self.steps == 0, 1.0, 1.0 - self.beta).to(mean.dtype)
            self.value.add_(weight * (mean - self.value))
            self.steps += 1
        return old.to(cost.dtype), 0.0

    def summary(self) -> float:
        return self.value.item()


class LeaveOneOut(Baseline):
    """With ``K`` vectorized particles (dimension ``dim`` of the cost), particle ``k``'s
    baseline is the mean cost of the other ``K - 1`` particles for the same datum:

    ``b_k = (sum_j c_j - c_k) / (K - 1)``.

    Independent of particle ``k``'s own draw, hence unbiased; stateless.
    """

    kind = "loo"

    def __init__(self, site: str, dim: int):
        super().__init__(site)
        self.dim = dim

    def forward(self, cost: torch.Tensor, options: SiteOptions):
        if cost.dim() < -self.dim or cost.shape[self.dim] < 2:
            raise ValueError(
                f"site {self.site!r}: leave-one-out needs the particles along dimension "
                f"{self.dim} of the downstream cost, which has shape {tuple(cost.shape)}"
            )
        k = cost.shape[self.dim]
        return (cost.sum(self.dim, keepdim=True) - cost) / (k - 1), 0.0


class NeuralBaseline(Baseline):
    """An input-dependent baseline ``b = net(x)`` (Pyro's ``nn_baseline`` and
    ``nn_baseline_input``), trained by the extra loss ``sum (c - b)^2`` through the SVI
    optimizer. ``x`` is detached; it must not depend on the site's own sample.

    State: the network's parameters and buffers, under ``net.``.
    """

    kind = "nn"

    def __init__(self, site: str, net: nn.Module):
        super().__init__(site)
        self.net = net

    def forward(self, cost: torch.Tensor, options: SiteOptions):
        if options.nn_baseline is not self.net:
            raise ValueError(
                f"site {self.site!r}: nn_baseline is another module than on the first step; "
                "create the baseline network once, outside the guide"
            )
        b = fit_shape(self.net(options.nn_baseline_input.detach()), cost, self.site)
        return b.detach(), (cost.detach() - b).pow(2).sum()


class BaselineValue(Baseline):
    """A given baseline ``b`` (Pyro's ``baseline_value``), fixed or learnable: a tensor that
    requires grad (say a ``pyro.param``) is trained with ``sum (c - b)^2``, as in
    ``TraceGraph_ELBO``. Its value belongs to whoever made it: no state here."""

    kind = "value"

    def forward(self, cost: torch.Tensor, options: SiteOptions):
        value = options.baseline_value
        b = torch.as_tensor(value, dtype=cost.dtype, device=cost.device)
        b = fit_shape(b, cost, self.site)
        loss = (cost.detach() - b).pow(2).sum() if b.requires_grad else 0.0
        return b.detach(), loss


def fit_shape(b: torch.Tensor, cost: torch.Tensor, site: str) -> torch.Tensor:
    """``b`` broadcast to ``cost``'s shape (a trailing singleton dimension is dropped first)."""
    candidates = [b]
    if b.dim() > cost.dim() and b.shape[-1] == 1:
        candidates.append(b.squeeze(-1))
    for candidate in candidates:
        try:
            return candidate.expand(cost.shape)
        except RuntimeError:
            continue
    raise ValueError(
        f"site {site!r}: the baseline has shape {tuple(b.shape)}, which does not broadcast to "
        f"the site's downstream-cost shape {tuple(cost.shape)}"
    )


def make_baseline(
    site: str,
    kind: str,
    options: SiteOptions,
    cost: torch.Tensor,
    beta: float,
    particle_dim: int | None,
) -> Baseline:
    """The baseline for ``site``: the site's own ``infer`` options win (``nn_baseline``, then
    ``baseline_value``, then ``use_decaying_avg_baseline``), else ``kind``."""
    if options.nn_baseline is not None:
        return NeuralBaseline(site, options.nn_baseline)
    if kind == "nn":
        raise ValueError(
            f"site {site!r}: baseline 'nn' needs the guide site to carry "
            'infer={"baseline": {"nn_baseline": net, "nn_baseline_input": x}}'
        )
    if options.baseline_value is not None:
        return BaselineValue(site)
    if options.baseline_beta is not None:
        beta = options.baseline_beta
    if options.use_decaying_avg_baseline or kind == "decaying":
        return DecayingAverage(site, beta, dtype=cost.dtype, device=cost.device)
    if kind == "loo":
        return LeaveOneOut(site, particle_dim)
    return NoBaseline(site)
