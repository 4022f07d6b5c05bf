"""The demo job: the families table, a routed mixed model, the variance it buys, the main job
(a VAE on the embedded digits) and a short Bayesian neural network."""

from __future__ import annotations

import json
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO
from pyro.optim import Adam

from pyro_reparam.apps.bnn_job import BNNJob, train_bnn
from pyro_reparam.apps.image_jobs import ImageJob, train_vae
from pyro_reparam.families import Kind, iter_families
from pyro_reparam.measure import compare_estimators, format_comparison
from pyro_reparam.routing import route


def _data(n: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    flags = torch.rand(n, generator=g) < 0.3
    return torch.randn(n, generator=g) + 1.0 + 3.0 * flags


def model(x: torch.Tensor) -> None:
    """A two-component shift model: x_i ~ N(loc + 3 flag_i, scale), flag_i ~ Bernoulli(0.3)."""
    loc = pyro.sample("loc", dist.Normal(0.0, 5.0))
    scale = pyro.sample("scale", dist.Gamma(2.0, 2.0))
    with pyro.plate("data", len(x)):
        flag = pyro.sample("flag", dist.Bernoulli(0.3))
        pyro.sample("x", dist.Normal(loc + 3.0 * flag, scale), obs=x)


def guide(x: torch.Tensor, baseline: bool = False) -> None:
    pyro.sample("loc", dist.Normal(pyro.param("loc_q", torch.tensor(0.0)), 0.3))
    pyro.sample("scale", dist.Gamma(pyro.param("scale_c", torch.tensor(4.0)).exp(), 2.0 * 50))
    logits = pyro.param("flag_logits", torch.zeros(len(x)))
    infer = {"baseline": {"use_decaying_avg_baseline": True}} if baseline else {}
    with pyro.plate("data", len(x)):
        pyro.sample("flag", dist.Bernoulli(logits=logits), infer=infer)


def run_demo(out: str = "runs/demo", device: str = "cpu", quick: bool = False) -> int:
    """Print the registry summary and a routing plan; train; compare gradient variances."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {k: 0 for k in Kind}
    for fam in iter_families():
        counts[fam.kind] += 1
    print("pyro-reparam: declared families by kind (`pyro-reparam families` lists them all)")
    print("  " + ", ".join(f"{k.value}: {n}" for k, n in counts.items()))

    x = _data().to(device)
    plan = route(model, guide, x, enumerate="never")
    print("\nRouting plan for a model with a Bernoulli flag per datum:\n")
    print(plan)

    steps = 30 if quick else 600
    svi = SVI(model, guide, Adam({"lr": 0.03}), plan.elbo())
    losses = [svi.step(x) for _ in range(steps)]
    print(f"\ntrained {steps} steps: loss {losses[0]:.1f} -> {sum(losses[-20:]) / 20:.1f}")

    evaluations = 80 if quick else 800
    results = compare_estimators(
        model,
        guide,
        {
            "Trace_ELBO (bare score)": Trace_ELBO(
                num_particles=4, vectorize_particles=True, max_plate_nesting=1
            ),
            "routed (leave-one-out, 4)": plan.elbo(),
        },
        x,
        evaluations=evaluations,
        params=["flag_logits"],
    )
    pyro_baseline = compare_estimators(
        model,
        lambda x: guide(x, baseline=True),
        {
            "TraceGraph + decaying avg": TraceGraph_ELBO(
                num_particles=4, vectorize_particles=True, max_plate_nesting=1
            )
        },
        x,
        evaluations=evaluations,
        params=["flag_logits"],
    )
    results.update(pyro_baseline)
    print("\nGradient of the flag logits, 4 particles per step for every estimator:\n")
    print(format_comparison(results))
    summary = {
        "plan": {n: s.estimator for n, s in plan.sites.items()},
        "losses": losses,
        "relative_variance": {n: s.relative_variance for n, s in results.items()},
    }
    (out_dir / "demo.json").write_text(json.dumps(summary, indent=2))
    print(f"\nwrote {out_dir / 'demo.json'}")

    print("\nThe main job: a VAE (2-D Gaussian latent) on the embedded digits\n")
    job = ImageJob(out=out_dir / "vae", epochs=3 if quick else 100, device=device,
                   iw_samples=20 if quick else 500, khat_particles=60 if quick else 200,
                   progress=not quick)  # fmt: skip
    train_vae(job, latent_dim=2)

    print("\nA Bayesian neural network (local reparameterization) on the diabetes data\n")
    train_bnn(BNNJob(data="diabetes", epochs=5 if quick else 300, out=out_dir / "bnn",
                     progress=not quick))  # fmt: skip
    return 0
