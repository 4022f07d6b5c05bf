"""Predictions of a :class:`~pyro_reparam.models.bnn.network.BayesianMLP` from weight draws:
of the guide, or of :meth:`fit_hmc`'s chains when it ran last."""

from __future__ import annotations

import math

import torch

SAMPLE_CHUNK = 100  # weight draws per batched forward pass in prediction


def evenly_spaced(total: int, count: int, device) -> torch.Tensor:
    """``count`` indices spread evenly over ``range(total)`` (repeating when ``count > total``)."""
    return torch.linspace(0, total - 1, count, device=device).round().long()


class PredictionMixin:
    """Posterior predictive quantities (methods of ``BayesianMLP``)."""

    @torch.no_grad()
    def predict(self, x: torch.Tensor, num_samples: int = 200, quantiles=(0.05, 0.5, 0.95)):
        """Posterior predictive in original units. Regression: ``{"mean", "std", "quantiles"}``
        (quantiles of ``y`` draws, shape ``(len(quantiles), B)``); classification: ``{"probs"}``
        averaged over weight draws."""
        xs, _ = self.transform(x)
        if self.task == "classification":
            return {"probs": self.function_samples(xs, num_samples).softmax(-1).mean(0)}
        y = self._predictive_likelihood(xs, num_samples).sample() * self.y_std + self.y_mean
        q = torch.as_tensor(quantiles, dtype=y.dtype, device=y.device)
        return {"mean": y.mean(0), "std": y.std(0), "quantiles": torch.quantile(y, q, dim=0)}

    @torch.no_grad()
    def log_predictive_density(self, x: torch.Tensor, y: torch.Tensor, num_samples: int = 200):
        """Per-point ``log p(y | x, data)`` in original units, ``(B,)``: the standardized
        density minus the log-Jacobian ``sum_d log y_std_d`` of the standardization."""
        xs, ys = self.transform(x, y)
        lp = self.log_predictive(xs, ys, num_samples)
        return lp - torch.log(self.y_std).sum() if self.task == "regression" else lp

    @torch.no_grad()
    def log_predictive(self, x: torch.Tensor, y: torch.Tensor, num_samples: int = 100):
        """``log (1/S) sum_s p(y | x, W_s)`` per data point (in the units of ``y``)."""
        lp = self._predictive_likelihood(x, num_samples).log_prob(y)
        return torch.logsumexp(lp, 0) - math.log(num_samples)

    @torch.no_grad()
    def function_samples(self, x: torch.Tensor, num_samples: int = 100) -> torch.Tensor:
        """Network outputs under ``num_samples`` weight draws from ``q`` (or HMC's draws, evenly
        spaced): ``(S, B, outputs)``, as batched matrix products over chunks of draws."""
        if self.hmc_result is not None:
            flat = self.hmc_result.samples.flatten(0, 1)
            flat = flat[evenly_spaced(flat.shape[0], num_samples, flat.device)]
        outs = []
        for start in range(0, num_samples, SAMPLE_CHUNK):
            s = min(SAMPLE_CHUNK, num_samples - start)
            if self.hmc_result is not None:
                draws = self._unflatten(flat[start : start + s])
            else:
                layers = range(len(self.sizes) - 1)
                draws = [tuple(q.sample((s,)) for q in self._q(l)) for l in layers]
            outs.append(self._forward(x, draws))
        return torch.cat(outs)

    def _predictive_likelihood(self, xs: torch.Tensor, num_samples: int):
        """``p(y | x, W_s)`` for ``num_samples`` weight draws, batch shape ``(S, B)``."""
        return self._likelihood(self._mean_output(self.function_samples(xs, num_samples)))

    def _expected_log_lik(self, xs, ys, num_samples: int, generator=None) -> float:
        """``E_q[sum_i log p(y_i | x_i, W)]`` by Monte Carlo under the guide, its weight draws
        from ``generator`` (default: the global RNG)."""
        if generator is None:
            lp = self._predictive_likelihood(xs, num_samples).log_prob(ys)
        else:
            draws = []
            for l in range(len(self.sizes) - 1):
                p = self._q_params(l)
                draws.append(tuple(
                    loc + scale * torch.randn((num_samples, *loc.shape), generator=generator,
                                              dtype=loc.dtype, device=loc.device)
                    for loc, scale in ((p["weight_loc"], p["weight_scale"]),
                                       (p["bias_loc"], p["bias_scale"]))))  # fmt: skip
            f = self._mean_output(self._forward(xs, draws))
            lp = self._likelihood(f).log_prob(ys)
        return lp.sum().item() / num_samples
