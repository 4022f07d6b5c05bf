r"""DisARM with a Taylor control variate taken at each antithetic pair's midpoint.

DisARM (:mod:`.disarm`) estimates the logit gradient of Bernoulli coordinate ``i`` from the pair
``b = 1[u < \sigma(\alpha)]``, ``\tilde b = 1[1 - u < \sigma(\alpha)]`` as
``\tfrac12 (f(b) - f(\tilde b))\, w_i`` with ``w_i = (-1)^{\tilde b_i} 1[b_i \ne \tilde b_i]
\sigma(|\alpha_i|)``. The signal ``f(b) - f(\tilde b)`` also carries the effect of every *other*
coordinate in which the pair differs, and at a trained point that is most of the estimator's
variance.

**What may be subtracted.** Swapping ``u_i`` for ``1 - u_i`` swaps ``b_i`` and ``\tilde b_i`` and
changes the sign of ``w_i`` and nothing else about it, so ``E[w_i \mid |u_i - \tfrac12|, u_{-i}]
= 0``. Any ``h_i`` that the swap leaves unchanged can therefore be subtracted from the signal,

.. math:: \hat g_i = \tfrac12\,\big(f(b) - f(\tilde b) - h_i\big)\, w_i ,\qquad
          E[h_i w_i] = E\big[h_i\, E[w_i \mid |u_i - \tfrac12|, u_{-i}]\big] = 0,

and the estimator stays unbiased, whatever ``h_i`` is.

**The control variate.** The pair's midpoint ``m = (b + \tilde b) / 2`` has ``m_i = 1/2`` where
the pair differs and ``m_i = b_i`` where it agrees, for either orientation of each coordinate:
no coordinate's swap changes it. With ``f`` extended to real ``z`` (a Bernoulli log-density
``z \log p + (1 - z)\log(1 - p)`` is defined there, and so is a network of ``z``) and
``g = \nabla_z f(m)``, the midpoint rule

.. math:: f(b) - f(\tilde b) \approx g \cdot (b - \tilde b)

is exact when ``f`` is quadratic along the segment, and coordinate ``i``'s share of it is
``g_i (b_i - \tilde b_i)``. The control variate is the rest,

.. math:: h_i = a \sum_{j \ne i} g_j\, (b_j - \tilde b_j),

summed over the coordinates of every Bernoulli site that enter the same datum's ``f``. Each
``g_j`` is computed at ``m``, so ``h_i`` does not change under coordinate ``i``'s swap.

**The coefficient** ``a`` minimizes ``\sum_i E[(f(b) - f(\tilde b) - a h_i)^2 w_i^2]``:
``a^* = \sum E[\Delta f\, h\, w^2] / \sum E[h^2 w^2]``. It is estimated from the *earlier* steps
with decaying averages (``beta``), so it does not depend on the current draw. The first step
uses ``a = 1``. ``coefficient=`` fixes it instead. The averages are the ELBO's state
(:meth:`state_dict`).

**Cost.** Each pair evaluates the model and guide at ``b`` and ``\tilde b`` (as DisARM does),
and once more at ``m`` with a backward pass to ``m``: ``evaluations_per_draw = 3 P``.

**At the midpoint** only the Bernoulli sites are set, to ``m``. Every other guide site is drawn
afresh there, independently of ``u``, so it cannot break the symmetry: reparameterized sites
and categorical sites. Categorical sites keep DisARM's plain signal. The midpoint run has
Pyro's validation off, since ``1/2`` is outside a Bernoulli's support. A model that cannot be
evaluated there (a distribution that checks its values regardless, say) gets ``h = 0`` with a
warning: plain DisARM, still unbiased. So does a site whose ``f`` does not depend on the value
differentiably (``g = 0``).
"""

from __future__ import annotations

import math
import warnings

import pyro
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.util import prune_subsample_sites

from pyro_reparam.estimators.baselines import check_beta
from pyro_reparam.estimators.disarm import DisARM_ELBO, _align, bernoulli_pair, pair_weight
from pyro_reparam.estimators.vimco import PARTICLE_PLATE

MIDPOINT_ERRORS = (ValueError, RuntimeError, TypeError, IndexError)


class _AtMidpoint(Messenger):
    """Sets the Bernoulli sites to their midpoints and replays the subsample sites of the
    pairs' guide run (all other sites sample afresh)."""

    def __init__(self, values: dict[str, torch.Tensor], raw_guide_trace):
        super().__init__()
        self.values = dict(values)
        for name, site in raw_guide_trace.nodes.items():
            if (
                site["type"] == "sample"
                and isinstance(site["fn"], _Subsample)
                and name != PARTICLE_PLATE
            ):
                self.values[name] = site["value"]

    def _pyro_sample(self, msg):
        if msg["name"] in self.values and not msg["is_observed"]:
            msg["value"] = self.values[msg["name"]]
            msg["done"] = True


class TaylorDisARM_ELBO(DisARM_ELBO):
    """DisARM with a control variate from the gradient at each pair's midpoint (see the module
    docstring); unbiased for the logits of Bernoulli guide sites.

    :param int num_pairs: ``P`` antithetic pairs per step (``3 P`` model evaluations).
    :param coefficient: a fixed ``a``; ``None`` (default) estimates the variance-minimizing one
        from the earlier steps.
    :param float beta: the decay of those estimates.
    :param max_plate_nesting: the model's plate nesting, guessed when infinite.
    """

    def __init__(
        self,
        num_pairs: int = 1,
        coefficient: float | None = None,
        beta: float = 0.9,
        max_plate_nesting: float | None = float("inf"),
    ):
        super().__init__(num_pairs=num_pairs, max_plate_nesting=max_plate_nesting)
        if coefficient is not None and (
            isinstance(coefficient, bool)
            or not isinstance(coefficient, (int, float))
            or not math.isfinite(coefficient)
        ):
            raise ValueError(
                "TaylorDisARM_ELBO: coefficient must be a finite number, or None to estimate it "
                f"from the earlier steps; got {coefficient!r}"
            )
        check_beta(beta, "TaylorDisARM_ELBO: beta")
        self.coefficient = coefficient
        self.beta = float(beta)
        self._moments: torch.Tensor | None = None  # decaying [sum df h w^2, sum h^2 w^2, steps]
        self._warned = False

    @property
    def evaluations_per_draw(self) -> int:
        """Model evaluations per step: the two members of each pair and its midpoint."""
        return 3 * self.num_pairs

    def current_coefficient(self) -> float:
        """The ``a`` the next step uses."""
        return float(self._coefficient())

    def _coefficient(self) -> torch.Tensor | float:
        """``a`` as a tensor once there are moments (no host sync on the step's path)."""
        if self.coefficient is not None:
            return float(self.coefficient)
        if self._moments is None:
            return 1.0
        num, den = self._moments[0], self._moments[1]
        return torch.where(den > 0, num / den.clamp(min=torch.finfo(den.dtype).tiny), 1.0)

    # -- the estimator ------------------------------------------------------------------------
    def _site_terms(self, coupled, pairs, f, run):
        p = self.num_pairs
        members = {
            name: bernoulli_pair(coupled.guide_trace.nodes[name], pd, p)
            for name, pd in pairs.sites.items()
            if name not in pairs.decisions
        }
        grads = self._midpoint_gradients(coupled, pairs, members, run) if members else None
        if grads is None:
            return self._pair_terms(coupled.guide_trace, pairs, f, {})
        lin = 0.0
        for name, (_, b, b_anti, event) in members.items():
            step = grads[name] * (b - b_anti)
            summed = step.sum(tuple(range(-event, 0))) if event else step
            lin = lin + self._per_datum(summed, coupled.sum_dims, None)
        a = self._coefficient()
        if torch.is_tensor(a):
            a = a.to(f.dtype)
        control, num, den = {}, 0.0, 0.0
        for name, (logits, b, b_anti, event) in members.items():
            h = _align(lin, logits.dim() - event, event) - grads[name] * (b - b_anti)
            df = _align(f[:p] - f[p:], logits.dim() - event, event)
            w2 = pair_weight(logits, b, b_anti).detach().pow(2)
            num = num + (df * h * w2).sum()
            den = den + (h * h * w2).sum()
            control[name] = a * h
        self._update(num, den)
        return self._pair_terms(coupled.guide_trace, pairs, f, control)

    def _midpoint_gradients(self, coupled, pairs, members, run) -> dict | None:
        """``g = grad_z f(m)`` per Bernoulli site (``None`` when the model cannot be
        evaluated at the midpoint: see the module docstring)."""
        model, guide, args, kwargs = run
        mids = {
            name: ((b + b_anti) / 2).detach().requires_grad_()
            for name, (_, b, b_anti, _) in members.items()
        }
        plate = pyro.plate(PARTICLE_PLATE, self.num_pairs, dim=self.particle_dim)
        try:
            with pyro.validation_enabled(False), poutine.block():
                with _AtMidpoint(mids, coupled.raw_guide_trace):
                    guide_trace = poutine.trace(plate(guide)).get_trace(*args, **kwargs)
                model_trace = poutine.trace(
                    poutine.replay(plate(model), trace=guide_trace)
                ).get_trace(*args, **kwargs)
                log_w = 0.0
                for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
                    trace = prune_subsample_sites(trace)
                    trace.compute_log_prob()
                    for site in trace.nodes.values():
                        if site["type"] == "sample":
                            lp = self._per_datum(site["log_prob"], coupled.sum_dims, coupled.scale)
                            log_w = log_w + sign * lp
                grads = torch.autograd.grad(log_w.sum(), list(mids.values()), allow_unused=True)
        except MIDPOINT_ERRORS as e:
            if not self._warned:
                self._warned = True
                message = (
                    f"TaylorDisARM_ELBO: the model and guide could not be evaluated at the pairs' "
                    f"midpoint (Bernoulli sites {sorted(mids)} at 1/2): {type(e).__name__}: {e}. "
                    "Continuing without the control variate (plain DisARM, still unbiased); "
                    "use DisARM_ELBO to skip the extra evaluation"
                )
                self.notes.append(message)
                warnings.warn(message, RuntimeWarning, stacklevel=4)
            return None
        return {
            name: torch.zeros_like(m) if g is None else g.detach()
            for (name, m), g in zip(mids.items(), grads, strict=True)
        }

    def _update(self, num: torch.Tensor, den: torch.Tensor) -> None:
        """Fold this step's moments into the decaying averages (after they were used)."""
        with torch.no_grad():
            new = torch.stack([num.detach(), den.detach()]).double()
            if self._moments is None:
                self._moments = torch.cat([new, new.new_ones(1)])
                return
            self._moments = self._moments.to(new.device)  # a state loaded on another device
            self._moments[:2].mul_(self.beta).add_((1 - self.beta) * new)
            self._moments[2] += 1

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The decaying moments behind the coefficient (empty before the first step)."""
        return {} if self._moments is None else {"coefficient.moments": self._moments.clone()}

    def load_state_dict(self, state: dict) -> None:
        unknown = sorted(set(state) - {"coefficient.moments"})
        if unknown:
            raise ValueError(
                f"TaylorDisARM_ELBO.load_state_dict: unexpected keys {unknown}; pass what "
                "state_dict() returned"
            )
        moments = state.get("coefficient.moments")
        self._moments = None if moments is None else moments.detach().clone().double()
