"""Training a :class:`~pyro_reparam.models.bnn.network.BayesianMLP` on arrays: standardization,
variational fitting (SVI) and exact posteriors by batched HMC from MAP starts."""

from __future__ import annotations

import pyro
import torch

from pyro_reparam.infer.hmc import HMCResult, hmc


class FittingMixin:
    """``fit``, ``fit_hmc`` and the standardization they share (methods of ``BayesianMLP``)."""

    def fit(self, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 1000, batch_size: int = 128,
            lr: float = 1e-2, seed: int = 0, progress: bool = False, **fit_kwargs):  # fmt: skip
        """Standardize ``x`` (and ``y`` for regression) with the training statistics, then train
        with :func:`pyro_reparam.fit`, ``ClippedAdam(lr)`` and :meth:`elbo` (or ``elbo=``).
        The history's records also hold the two ELBO terms on the training data:
        ``expected_log_likelihood`` (MC, 8 draws) and ``kl`` (closed form), in standardized
        units. Their draws come from a stream of their own, seeded by ``(seed, epoch)``, so
        that training draws what it would without them and a resumed fit is the uninterrupted
        one (``checkpoint_dir=..., resume=True``)."""
        from pyro_reparam.train import fit as svi_fit

        xs, ys, device = self._prepare(x, y, fit_kwargs.pop("device", None))
        n = xs.shape[0]

        stream = torch.Generator(device=device)  # the terms' own: training draws are untouched

        def terms(epoch, record):
            stream.manual_seed(seed * 1_000_003 + epoch)
            with torch.no_grad():
                record["expected_log_likelihood"] = self._expected_log_lik(xs, ys, 8, stream)
                record["kl"] = self.kl()

        model = lambda x, y: self.model(x, y, num_data=n)  # noqa: E731
        guide = lambda x, y: self.guide(x, y, num_data=n)  # noqa: E731
        optim = pyro.optim.ClippedAdam({"lr": lr, "clip_norm": 10.0})
        callbacks = [terms, *fit_kwargs.pop("callbacks", [])]
        elbo = fit_kwargs.pop("elbo", None) or self.elbo(num_data=n)
        return svi_fit(model, guide, (xs, ys), elbo=elbo, optim=optim, epochs=epochs,
                       batch_size=batch_size, seed=seed, progress=progress,
                       callbacks=callbacks, device=device, **fit_kwargs)  # fmt: skip

    def _prepare(self, x, y, device):
        """What both fits start with: move the network to ``device`` (default: the data's),
        set the standardization from ``(x, y)``, the ``nngp`` prior from the standardized data,
        and forget earlier HMC draws. Returns ``(xs, ys, device)``."""
        from pyro_reparam.train import resolve_device

        device = resolve_device(device or x.device)
        self.to(device)
        self._standardizer(x.to(device), y.to(device))
        xs, ys = self.transform(x, y)
        self._set_prior(xs, ys)
        self.hmc_result = None
        return xs, ys, device

    def _standardizer(self, x, y) -> None:
        """Training statistics, kept as buffers so that ``.to(device)`` moves them and
        ``state_dict`` saves them (identity until the first fit)."""
        regression = self.task == "regression"
        stats = {
            "x_mean": x.mean(0),
            "x_std": x.std(0).clamp(min=1e-8),
            "y_mean": y.mean(0) if regression else x.new_zeros(()),
            "y_std": y.std(0).clamp(min=1e-8) if regression else x.new_ones(()),
        }
        for name, value in stats.items():
            self.register_buffer(name, value)

    def transform(self, x, y=None):
        """Inputs (and targets) in the standardized units the network sees, on the model's
        device."""
        x = x.to(self.x_mean.device)
        y = None if y is None else y.to(self.x_mean.device)
        xs = (x - self.x_mean) / self.x_std
        if y is None or self.task == "classification":
            return xs, y
        return xs, (y - self.y_mean) / self.y_std

    def fit_hmc(self, x: torch.Tensor, y: torch.Tensor, *, num_samples: int = 200,
                warmup: int = 300, num_chains: int = 16, num_steps: int = 32, map_steps: int = 500,
                seed: int = 0, device=None, progress: bool = False) -> HMCResult:  # fmt: skip
        """Sample the exact posterior ``p(W | x, y)`` by HMC, ``num_chains`` chains batched.

        A network's posterior has many modes and a chain stays near the one it starts in, so
        the pooled draws cover as many regions as there are chains; batched, 16 chains cost
        about what 4 do on a small network (on the gap toy, 4 chains gave a gap/near std
        ratio of 1.7-4.4 across seeds, 16 chains 3.8-4.3).

        Full-data log joint (:meth:`_log_joint`) on the standardized data. Regression needs
        ``noise="homoscedastic"``; the noise is held at ``exp(log_noise)``: the type-II
        estimate under ``prior="nngp"``, else the current value (1, the data's spread, before
        any fit). Each chain starts at a MAP estimate (``map_steps`` of Adam from its own
        prior draw), then runs ``warmup`` adaptation and ``num_samples`` kept iterations of
        ``num_steps`` leapfrog steps (:func:`~pyro_reparam.infer.hmc.hmc`). Afterwards
        :meth:`predict`, :meth:`function_samples` and :meth:`log_predictive_density` use these
        draws (a later :meth:`fit` returns to the guide). Check mixing with :meth:`hmc_rhat`."""
        if self.noise == "heteroscedastic":
            raise ValueError(
                "BayesianMLP.fit_hmc: needs noise='homoscedastic'. With the noise as a network "
                "output the posterior density grows without bound where the net predicts a "
                "vanishing noise at a training point, and chains get stuck in those spikes; "
                "construct the network with noise='homoscedastic'"
            )
        xs, ys, device = self._prepare(x, y, device)
        torch.manual_seed(seed)
        init = self._prior_draws(num_chains, device)
        log_joint = self._log_joint(xs, ys)
        with torch.no_grad(), pyro.validation_enabled(False):  # diverging proposals are rejected
            init = _map_estimate(log_joint, init, map_steps)
            self.hmc_result = hmc(log_joint, init, num_samples=num_samples, warmup=warmup,
                                  num_steps=num_steps, progress=progress)  # fmt: skip
        return self.hmc_result

    def _prior_draws(self, count: int, device) -> torch.Tensor:
        """``count`` flat parameter vectors ``(count, P)`` drawn from the prior."""
        rows = []
        for (s_w, s_b), i, o in zip(self.prior_scales.tolist(), self.sizes[:-1], self.sizes[1:],
                                    strict=True):  # fmt: skip
            rows += [s_w * torch.randn(count, o * i, device=device),
                     s_b * torch.randn(count, o, device=device)]  # fmt: skip
        return torch.cat(rows, 1)

    def _log_joint(self, xs: torch.Tensor, ys: torch.Tensor):
        """``theta (C, P) -> (C,)``: ``sum_l log N(W_l; 0, s_l^2) + sum_i log p(y_i | x_i, W)``
        up to a constant, on flat parameter vectors (:meth:`_unflatten`)."""
        scales = self.prior_scales.tolist()

        def log_joint(theta: torch.Tensor) -> torch.Tensor:
            draws = self._unflatten(theta)
            lp = -0.5 * sum((w / s_w).pow(2).sum((-1, -2)) + (b / s_b).pow(2).sum(-1)
                            for (s_w, s_b), (w, b) in zip(scales, draws, strict=True))  # fmt: skip
            f = self._mean_output(self._forward(xs, draws))
            return lp + self._likelihood(f).log_prob(ys).sum(-1)

        return log_joint


def _map_estimate(log_joint, theta: torch.Tensor, steps: int, lr: float = 0.01) -> torch.Tensor:
    """``argmax log_joint`` for each row of ``theta`` by ``steps`` of Adam."""
    theta = theta.clone().requires_grad_()
    optim = torch.optim.Adam([theta], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            optim.zero_grad()
            (-log_joint(theta).sum()).backward()
            optim.step()
    return theta.detach()
