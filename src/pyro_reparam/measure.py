"""Measure gradient estimators: per-parameter mean, variance and signal-to-noise ratio.

For a parameter vector ``phi`` and ``N`` independent gradient draws ``g_1..g_N`` of an ELBO
estimator, we report the mean ``m``, the elementwise variance ``v`` (unbiased), the SNR
``|m| / sqrt(v)``, and the totals ``tr Cov = sum v`` and the relative variance
``tr Cov / |m|^2`` (scale-free: comparable across problems).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import pyro.poutine as poutine
import torch
from pyro.infer import ELBO

from pyro_reparam.estimators.score_elbo import BASELINE_PARAM_PREFIX
from pyro_reparam.tables import format_table


@dataclass
class ParamGradStats:
    """Gradient statistics of one parameter over ``num_draws`` draws (tensors of its shape)."""

    mean: torch.Tensor
    variance: torch.Tensor
    num_draws: int

    @property
    def snr(self) -> torch.Tensor:
        return self.mean.abs() / self.variance.sqrt().clamp(min=1e-30)

    @property
    def standard_error(self) -> torch.Tensor:
        """Monte Carlo standard error of ``mean``."""
        return (self.variance / self.num_draws).sqrt()


@dataclass
class GradientStats:
    """Per-parameter :class:`ParamGradStats` and their totals."""

    params: dict[str, ParamGradStats]
    num_draws: int
    evaluations_per_draw: int

    @property
    def trace_cov(self) -> float:
        return sum(p.variance.sum().item() for p in self.params.values())

    @property
    def mean_sq_norm(self) -> float:
        return sum(p.mean.pow(2).sum().item() for p in self.params.values())

    @property
    def relative_variance(self) -> float:
        """``tr Cov / |mean|^2``; note ``|mean|^2`` is itself estimated from the draws."""
        return self.trace_cov / max(self.mean_sq_norm, 1e-300)

    @property
    def snr(self) -> float:
        """Overall signal-to-noise ratio ``|mean| / sqrt(tr Cov)``."""
        return math.sqrt(self.mean_sq_norm / max(self.trace_cov, 1e-300))

    def __str__(self) -> str:
        rows = [
            (name, p.mean.norm().item(), p.variance.sum().item(), p.snr.mean().item())
            for name, p in self.params.items()
        ]
        table = format_table(("param", "|mean|", "tr var", "mean SNR"), rows, rule=True)
        total = (
            f"total: tr Cov {self.trace_cov:.4g}, |mean|^2 {self.mean_sq_norm:.4g}, "
            f"relative variance {self.relative_variance:.4g} ({self.num_draws} draws)"
        )
        return table + "\n" + total


def _selector(params) -> Callable[[str], bool]:
    if params is None:
        return lambda name: not name.startswith(BASELINE_PARAM_PREFIX)
    if isinstance(params, str):
        return lambda name: name.startswith(params)
    if callable(params):
        return params
    names = set(params)
    return lambda name: name in names


def gradient_variance(
    model: Callable,
    guide: Callable,
    elbo: ELBO,
    *args,
    num_draws: int = 100,
    params: Iterable[str] | str | Callable[[str], bool] | None = None,
    batches: Iterable[tuple] | None = None,
    warmup: int = 0,
    **kwargs,
) -> GradientStats:
    """Draw ``num_draws`` gradients of ``elbo`` at the current parameters and summarize them.

    ``params`` selects parameters by a list of names, a name prefix, or a predicate (default:
    every parameter of the model and guide). Parameters are not changed; estimator state such
    as running-average baselines evolves as it would in training.

    ``batches``: measure under minibatching as in training. Each draw takes the next tuple of
    model arguments from ``batches`` (a list, or a ``DataLoader`` that reshuffles on each pass;
    it is iterated again when it runs out) instead of ``*args``; the variance then includes
    the minibatch noise that every estimator shares. ``warmup`` draws are taken first and
    discarded, so running-average baselines reach their training-time state.
    """
    if num_draws < 2:
        raise ValueError(f"gradient_variance: num_draws must be >= 2, got {num_draws}")
    if warmup < 0:
        raise ValueError(f"gradient_variance: warmup must be >= 0, got {warmup}")
    if batches is not None and args:
        raise ValueError(
            "gradient_variance: pass the model's arguments either as *args or as `batches`, "
            "not both"
        )
    next_args = _argument_stream(batches, args)
    keep = _selector(params)
    for _ in range(warmup):
        with poutine.trace(param_only=True) as tape:
            elbo.loss_and_grads(model, guide, *next_args(), **kwargs)
        for site in tape.trace.nodes.values():
            site["value"].unconstrained().grad = None
    sums: dict[str, torch.Tensor] = {}
    sq_sums: dict[str, torch.Tensor] = {}
    for _ in range(num_draws):
        with poutine.trace(param_only=True) as tape:
            elbo.loss_and_grads(model, guide, *next_args(), **kwargs)
        seen = {
            name: site["value"].unconstrained()
            for name, site in tape.trace.nodes.items()
            if keep(name)
        }
        if not seen:
            raise ValueError(
                "gradient_variance: no parameter matched `params`; the model and guide have "
                f"{sorted(s['name'] for s in tape.trace.nodes.values())}"
            )
        for name, p in seen.items():
            g = torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
            sums[name] = sums.get(name, 0) + g.double()
            sq_sums[name] = sq_sums.get(name, 0) + g.double().pow(2)
        for site in tape.trace.nodes.values():
            site["value"].unconstrained().grad = None
    stats = {}
    for name in sums:
        mean = sums[name] / num_draws
        var = (sq_sums[name] - num_draws * mean.pow(2)) / (num_draws - 1)
        stats[name] = ParamGradStats(mean, var.clamp(min=0.0), num_draws)
    return GradientStats(stats, num_draws, evaluations_per_draw(elbo))


def evaluations_per_draw(elbo: ELBO) -> int:
    """Model evaluations per gradient draw: the ELBO's ``evaluations_per_draw`` where it
    declares one (an estimator that evaluates the model beyond its particles), else its
    ``num_particles``."""
    return int(getattr(elbo, "evaluations_per_draw", getattr(elbo, "num_particles", 1)))


def _argument_stream(batches, args) -> Callable[[], tuple]:
    """A function returning the model arguments of the next draw."""
    if batches is None:
        return lambda: args
    state = {"it": iter(batches)}

    def next_args():
        try:
            batch = next(state["it"])
        except StopIteration:
            state["it"] = iter(batches)
            try:
                batch = next(state["it"])
            except StopIteration:
                raise ValueError("gradient_variance: `batches` is empty") from None
        return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)

    return next_args


def compare_estimators(
    model: Callable,
    guide: Callable,
    elbos: Mapping[str, ELBO],
    *args,
    evaluations: int = 400,
    params: Iterable[str] | str | Callable[[str], bool] | None = None,
    batches: Iterable[tuple] | None = None,
    warmup: int = 0,
    **kwargs,
) -> dict[str, GradientStats]:
    """:func:`gradient_variance` for several estimators at an equal number of model evaluations.

    An estimator with ``K`` model evaluations per draw (:func:`evaluations_per_draw`) gets
    ``evaluations // K`` draws, so each spends the same compute on the measurement.
    ``batches`` and ``warmup`` are as in :func:`gradient_variance`. ``format_comparison``
    prints the result as a table.
    """
    out = {}
    for name, elbo in elbos.items():
        draws = max(2, evaluations // evaluations_per_draw(elbo))
        out[name] = gradient_variance(
            model,
            guide,
            elbo,
            *args,
            num_draws=draws,
            params=params,
            batches=batches,
            warmup=warmup,
            **kwargs,
        )
    return out


def format_comparison(results: Mapping[str, GradientStats]) -> str:
    """A table: estimator, particles, draws, tr Cov, relative variance, SNR."""
    header = ("estimator", "particles", "draws", "tr Cov", "rel. var", "SNR")
    rows = [
        (name, s.evaluations_per_draw, s.num_draws, s.trace_cov, s.relative_variance, s.snr)
        for name, s in results.items()
    ]
    return format_table(header, rows, rule=True)


@dataclass
class PilotStats:
    """A short measurement of one estimator: ``tr Cov`` of its gradient with a standard error,
    and its cost per draw in model evaluations and seconds."""

    trace_cov: float
    trace_cov_se: float
    evaluations_per_draw: int
    seconds_per_draw: float
    num_draws: int

    @property
    def variance_per_evaluation(self) -> float:
        """``tr Cov x evaluations``: the variance of a mean over one model evaluation's worth of
        draws (lower is better at an equal evaluation budget)."""
        return self.trace_cov * self.evaluations_per_draw

    @property
    def variance_per_evaluation_se(self) -> float:
        return self.trace_cov_se * self.evaluations_per_draw

    @property
    def variance_per_second(self) -> float:
        return self.trace_cov * self.seconds_per_draw


def pilot_variance(
    model: Callable,
    guide: Callable,
    elbo: ELBO,
    *args,
    num_draws: int = 30,
    params: Iterable[str] | str | Callable[[str], bool] | None = None,
    batches: Iterable[tuple] | None = None,
    **kwargs,
) -> PilotStats:
    """``num_draws`` gradients of ``elbo`` at the current parameters: ``tr Cov`` and its
    standard error (``tr Cov`` is the mean of ``|g_i - mean g|^2 n / (n - 1)``; its standard
    error the standard deviation of those terms over ``sqrt(n)``), and the cost per draw."""
    import time

    if num_draws < 3:
        raise ValueError(f"pilot_variance: num_draws must be >= 3, got {num_draws}")
    next_args = _argument_stream(batches, args)
    keep = _selector(params)
    rows, seconds = [], 0.0
    for _ in range(num_draws):
        call_args = next_args()
        start = time.perf_counter()
        with poutine.trace(param_only=True) as tape:
            elbo.loss_and_grads(model, guide, *call_args, **kwargs)
        seconds += time.perf_counter() - start
        flat = []
        for name, site in sorted(tape.trace.nodes.items()):
            p = site["value"].unconstrained()
            if keep(name):
                g = torch.zeros_like(p) if p.grad is None else p.grad
                flat.append(g.detach().double().flatten())
            p.grad = None
        rows.append(torch.cat(flat) if flat else torch.zeros(1, dtype=torch.float64))
    g = torch.stack(rows)
    n = g.shape[0]
    terms = (g - g.mean(0)).pow(2).sum(1) * n / (n - 1)
    return PilotStats(
        terms.mean().item(),
        (terms.std() / math.sqrt(n)).item(),
        evaluations_per_draw(elbo),
        seconds / n,
        n,
    )
