"""ArviZ views of a :class:`~pyro_reparam.models.bnn.network.BayesianMLP`'s HMC chains: R-hat of
the network's function values and a ``DataTree`` of the last layer with its predictive."""

from __future__ import annotations

import torch

from pyro_reparam.models.bnn.prediction import evenly_spaced


class ExportMixin:
    """Diagnostics of :meth:`fit_hmc`'s chains (methods of ``BayesianMLP``)."""

    @torch.no_grad()
    def hmc_rhat(self, x: torch.Tensor) -> torch.Tensor:
        """Rank-normalized split R-hat (ArviZ) of the network's mean output at each input
        ``x`` across the chains of :meth:`fit_hmc`: ``(B,)``. Weight-space R-hat is
        meaningless for a network (hidden units can swap between chains); function values
        are what predictions average. Values above 1.01 say: run longer or more chains."""
        import arviz as az

        if self.hmc_result is None:
            raise RuntimeError("BayesianMLP.hmc_rhat: call fit_hmc first")
        xs, _ = self.transform(x)
        samples = self.hmc_result.samples
        f = self._forward(xs, self._unflatten(samples.flatten(0, 1)))
        f = f[..., 0].reshape(*samples.shape[:2], -1)
        return torch.as_tensor(az.rhat(f.cpu().numpy(), chain_axis=0, draw_axis=1))

    @torch.no_grad()
    def hmc_datatree(self, x: torch.Tensor, y: torch.Tensor, max_draws: int = 200):
        """An ArviZ ``DataTree`` of :meth:`fit_hmc`'s chains on data ``(x, y)``: the last
        layer's weights and bias as ``posterior`` (chain, draw, ...), ``log_likelihood`` and
        ``posterior_predictive`` of ``y`` (standardized units) and ``observed_data``, at most
        ``max_draws`` evenly spaced draws per chain. Unlike a variational fit, its R-hat, ESS
        and PSIS-LOO carry their MCMC meaning (:func:`pyro_reparam.diagnose`)."""
        import arviz as az

        if self.hmc_result is None:
            raise RuntimeError("BayesianMLP.hmc_datatree: call fit_hmc first")
        xs, ys = self.transform(x, y)
        samples = self.hmc_result.samples
        kept = evenly_spaced(samples.shape[1], min(max_draws, samples.shape[1]), samples.device)
        samples = samples[:, kept]
        chains, draws = samples.shape[:2]
        layers = self._unflatten(samples.flatten(0, 1))
        lik = self._likelihood(self._mean_output(self._forward(xs, layers)))
        last = len(self.sizes) - 2
        w, b = layers[-1]

        def np_(t):
            return t.reshape(chains, draws, *t.shape[1:]).cpu().numpy()

        data = {
            "posterior": {f"layer{last}.weight": np_(w), f"layer{last}.bias": np_(b)},
            "log_likelihood": {"y": np_(lik.log_prob(ys))},
            "posterior_predictive": {"y": np_(lik.sample())},
            "observed_data": {"y": ys.cpu().numpy()},
        }
        dims = {"y": ["data"]} | {name: [f"{name}_dim_{i}" for i in range(v.ndim - 2)]
                                  for name, v in data["posterior"].items()}  # fmt: skip
        return az.from_dict(data, dims=dims)
