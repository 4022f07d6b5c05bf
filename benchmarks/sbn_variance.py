"""Encoder-gradient variance on a sigmoid belief net (64 binary latents) on binarized digits.

The model is :class:`pyro_reparam.models.DiscreteVAE` (Bernoulli latents, MLP encoder and
decoder with 200 tanh units). It is first trained with the routed default ELBO until its
latents are used (mean KL(q(z|x) || p(z)) above ``MIN_KL`` nats/image), then frozen; each
estimator then draws gradients of the encoder parameters on shuffled minibatches of 100
(as in training), after ``WARMUP`` discarded draws so running-average baselines are warm.

Figures: ``tr Cov`` of the gradient and the relative variance ``tr Cov / |m_ref|^2``, with
``m_ref`` the mean gradient of the routed estimator (the most precise unbiased one), so all
estimators are scaled by the same number; ``cos`` is the cosine between an estimator's mean
gradient and ``m_ref`` (a biased estimator shows up there). Estimators with ``K`` particles get
``EVALUATIONS / K`` draws: equal model evaluations.

Under shuffled minibatches part of every unbiased estimator's ``tr Cov`` is the minibatch's own
(the exact minibatch gradient varies from batch to batch): :func:`minibatch_floor` measures it,
and ``above_floor_over_routed`` compares the estimators on what is left, the part an estimator
can reduce.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO
from pyro.optim import Adam

import pyro_reparam as pr
from benchmarks.report import write
from pyro_reparam.apps.data import load_digits
from pyro_reparam.estimators import ARMS_ELBO, DisARM_ELBO, TaylorDisARM_ELBO
from pyro_reparam.measure import evaluations_per_draw
from pyro_reparam.models import DiscreteVAE
from pyro_reparam.tables import format_table

BATCH = 100
MIN_KL = 0.1
EVALUATIONS = 800
WARMUP = 100
LATER_EPOCHS, LATER_LR = 90, 3e-3
PYRO_BASELINE = {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}}


def _batches(x: torch.Tensor, generator: torch.Generator, drop_last: bool = True):
    """An endless stream of shuffled minibatches (a fresh permutation per pass)."""
    while True:
        perm = torch.randperm(len(x), generator=generator)
        stop = len(x) - len(x) % BATCH if drop_last else len(x)
        for i in range(0, stop, BATCH):
            yield (x[perm[i : i + BATCH]],)


def train(vae: DiscreteVAE, x: torch.Tensor, epochs: int, log, lr: float = 1e-3,
          seed: int = 1) -> list[dict]:  # fmt: skip
    """Fit with the routed default (Adam at ``lr``), logging loss and KL per epoch."""
    plan = pr.route(vae.model, vae.guide, x[:BATCH])
    log(str(plan))
    svi = SVI(vae.model, vae.guide, Adam({"lr": lr}), plan.elbo())
    g = torch.Generator().manual_seed(seed)
    stream = _batches(x, g, drop_last=False)
    steps = -(-len(x) // BATCH)
    history = []
    for epoch in range(epochs):
        loss = sum(svi.step(*next(stream)) for _ in range(steps)) / len(x)
        kl = vae.kl(x).mean().item()
        history.append({"epoch": epoch + 1, "loss_per_image": loss, "kl_per_image": kl})
        if (epoch + 1) % 10 == 0:
            log(f"epoch {epoch + 1:3d}  -ELBO/image {loss:7.3f}  KL/image {kl:6.3f}")
    return history


def _pyro_guide(vae: DiscreteVAE):
    """The same encoder, with Pyro's decaying-average baseline requested on the site."""

    def guide(x):
        pyro.module(f"{vae.name}.encoder", vae.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", vae.posterior(x), infer=PYRO_BASELINE)

    return guide


def _relaxed_guide(vae: DiscreteVAE, temperature: float):
    def guide(x):
        pyro.module(f"{vae.name}.encoder", vae.encoder)
        vae.temperature = temperature
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", vae.posterior(x, relaxed=True))

    return guide


def _clear_baselines() -> None:
    store = pyro.get_param_store()
    for name in list(store.keys()):
        if name.startswith("__baseline"):  # TraceGraph_ELBO keeps its averages there
            del store[name]


def minibatch_floor(vae: DiscreteVAE, x: torch.Tensor, num_batches: int, draws: int,
                    pairs: int) -> dict:  # fmt: skip
    """The part of every unbiased estimator's ``tr Cov`` under shuffled minibatches that is the
    minibatch's own: ``tr Cov_batch(E[g | batch])``, the spread of the exact minibatch gradient.
    No estimator of the minibatch gradient removes it. Per batch, the mean of ``draws``
    DisARM gradients with ``pairs`` pairs estimates the exact gradient; across batches
    ``tr Var(mean) = floor + E[tr Cov within] / draws``, so the within-batch part is subtracted.
    The standard error is the bootstrap's over batches."""
    stream = _batches(x, torch.Generator().manual_seed(5))
    elbo = DisARM_ELBO(num_pairs=pairs)
    means, within = [], []
    for _ in range(num_batches):
        s = pr.gradient_variance(vae.model, vae.guide, elbo, *next(stream), num_draws=draws,
                                 params=f"{vae.name}.encoder")  # fmt: skip
        means.append(torch.cat([p.mean.flatten() for p in s.params.values()]).double())
        within.append(s.trace_cov)
    m, w = torch.stack(means), torch.tensor(within, dtype=torch.float64)

    def floor(rows):
        return (m[rows].var(0).sum() - w[rows].mean() / draws).item()

    g = torch.Generator().manual_seed(6)
    boot = [floor(torch.randint(num_batches, (num_batches,), generator=g)) for _ in range(200)]
    return {"trace_cov": floor(torch.arange(num_batches)), "se": float(torch.tensor(boot).std()),
            "batches": num_batches, "draws_per_batch": draws, "disarm_pairs": pairs}  # fmt: skip


def last_batch_check(vae: DiscreteVAE, x: torch.Tensor) -> dict[str, str]:
    """Run a step on a full batch, then on a smaller last batch, per estimator."""
    out = {}
    cases = {
        "TraceGraph_ELBO + decaying": (_pyro_guide(vae), TraceGraph_ELBO()),
        "routed default": (vae.guide, pr.route(vae.model, vae.guide, x[:BATCH]).elbo()),
        "ScoreFunctionELBO decaying": (vae.guide, pr.ScoreFunctionELBO(baseline="decaying")),
    }
    for name, (guide, elbo) in cases.items():
        _clear_baselines()
        try:
            for batch in (x[:BATCH], x[BATCH : BATCH + 37]):
                elbo.loss_and_grads(vae.model, guide, batch)
            out[name] = "ok"
        except RuntimeError as e:
            out[name] = f"RuntimeError: {str(e).splitlines()[0][:90]}"
    for p in pyro.get_param_store().values():
        p.grad = None
    return out


HEADERS = ["estimator", "evals", "draws", "tr Cov", "rel. var", "per eval / LOO", "cos"]
SELECTED = {
    "loo": "routed default: LOO (K=4)",
    "disarm": "DisARM (2 pairs)",
    "arms": "ARMS (n=4)",
    "taylor_disarm": "Taylor DisARM (1 pair)",
}
"""The rows of the estimators ``route(select="measure")`` chooses among."""


def _measure(vae, x, estimators: dict, evaluations: int, quick: bool, log) -> dict:
    """``gradient_variance`` of the encoder under each ``(guide, elbo)`` at equal model
    evaluations, on shuffled minibatches after a warm-up (the same streams for each)."""
    results = {}
    for name, (guide, elbo) in estimators.items():
        _clear_baselines()
        pyro.set_rng_seed(2)
        t = time.perf_counter()
        results[name] = pr.gradient_variance(
            vae.model,
            guide,
            elbo,
            num_draws=max(2, evaluations // evaluations_per_draw(elbo)),
            params=f"{vae.name}.encoder",
            batches=_batches(x, torch.Generator().manual_seed(3)),
            warmup=WARMUP // evaluations_per_draw(elbo) if not quick else 10,
        )
        log(f"  {name:<30} {time.perf_counter() - t:6.1f} s")
    return results


def _table(results: dict, reference: str) -> tuple[dict, list]:
    """Per estimator: ``tr Cov``, the relative variance against ``|m_ref|^2`` (the mean
    gradient of ``reference``, so all share one scale), ``tr Cov x evaluations`` over the
    reference's (the variance at an equal evaluation budget) and the cosine to ``m_ref``."""
    ref = results[reference]
    ref_vec = torch.cat([p.mean.flatten() for p in ref.params.values()])
    rows, table = [], {}
    for name, s in results.items():
        vec_m = torch.cat([p.mean.flatten() for p in s.params.values()])
        cos = (vec_m @ ref_vec / (vec_m.norm() * ref_vec.norm())).item()
        rel = s.trace_cov / ref.mean_sq_norm
        per_eval = (s.trace_cov * s.evaluations_per_draw) / (
            ref.trace_cov * ref.evaluations_per_draw
        )
        table[name] = {"particles": s.evaluations_per_draw, "draws": s.num_draws,
                       "trace_cov": s.trace_cov, "relative_variance": rel,
                       "per_evaluation_over_reference": per_eval,
                       "cosine_to_reference": cos}  # fmt: skip
        rows.append([name, s.evaluations_per_draw, s.num_draws, f"{s.trace_cov:.4g}",
                     f"{rel:.3g}", f"{per_eval:.3f}", f"{cos:.3f}"])  # fmt: skip
    return table, rows


def _select(vae, x, quick: bool):
    """``route(select="measure")`` on shuffled minibatches: the plan and its pick's row name."""
    measured = pr.route(
        vae.model,
        vae.guide,
        x[:BATCH],
        select="measure",
        pilot_draws=10 if quick else 30,
        pilot_batches=_batches(x, torch.Generator().manual_seed(4)),
    )
    chosen = SELECTED[next(r["estimator"] for r in measured.selection if r["chosen"])]
    return measured, chosen


def later_point(vae: DiscreteVAE, x: torch.Tensor, quick: bool, log) -> dict:
    """The same comparison after ``LATER_EPOCHS`` more epochs at ``LATER_LR``, where the latents
    carry more information (KL about twice the first point's): which estimator is best depends
    on the trained point, and ``route(select="measure")`` measures it there."""
    t0 = time.perf_counter()
    epochs = 10 if quick else LATER_EPOCHS
    history = train(vae, x, epochs, log, lr=LATER_LR, seed=7)
    kl = history[-1]["kl_per_image"]
    log(f"trained {epochs} more epochs in {time.perf_counter() - t0:.1f} s; KL {kl:.3f}")
    estimators = {name: (vae.guide, elbo) for name, elbo in (
        ("routed default: LOO (K=4)", pr.route(vae.model, vae.guide, x[:BATCH]).elbo()),
        ("DisARM (2 pairs)", DisARM_ELBO(num_pairs=2)),
        ("ARMS (n=4)", ARMS_ELBO(num_particles=4)),
        ("Taylor DisARM (1 pair)", TaylorDisARM_ELBO(num_pairs=1)),
        ("Taylor DisARM (2 pairs)", TaylorDisARM_ELBO(num_pairs=2)),
    )}  # fmt: skip
    results = _measure(vae, x, estimators, 160 if quick else EVALUATIONS, quick, log)
    table, rows = _table(results, "routed default: LOO (K=4)")
    routed = table["routed default: LOO (K=4)"]["relative_variance"]
    for row in table.values():
        row["over_routed"] = row["relative_variance"] / routed
    best = min((n for n in table if table[n]["particles"] <= 4),
               key=lambda n: table[n]["relative_variance"])  # fmt: skip
    measured, chosen = _select(vae, x, quick)
    text = (
        f"Later point: {epochs} more epochs at lr {LATER_LR} (KL {kl:.2f} nats/image):\n\n"
        f"```\n{format_table(HEADERS, rows)}\n```\n\nbest at <= 4 evaluations: {best} "
        f"({table[best]['over_routed']:.3f} of the routed default); route(select='measure') "
        f"picks {chosen}"
    )
    log(text)
    return {"epochs": epochs, "lr": LATER_LR, "final_kl_per_image": kl, "estimators": table,
            "best": best, "select_measure_picks": chosen, "text": text,
            "select_measure_pilot": measured.selection}  # fmt: skip


def run(out: Path, quick: bool = False, log=print) -> dict:
    torch.set_num_threads(1)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x = load_digits("train").binarized().images
    vae = DiscreteVAE(64, num_latents=64, hidden=(200,))
    t0 = time.perf_counter()
    epochs = 15 if quick else 60
    history = train(vae, x, epochs, log)
    kl = history[-1]["kl_per_image"]
    log(f"trained {epochs} epochs in {time.perf_counter() - t0:.1f} s; KL {kl:.3f} nats/image")
    if not quick and kl <= MIN_KL:
        raise RuntimeError(f"the latents are unused (KL {kl:.3f} <= {MIN_KL}); measure elsewhere")
    evaluations = 160 if quick else EVALUATIONS
    pyro_guide = _pyro_guide(vae)
    routed = pr.route(vae.model, vae.guide, x[:BATCH]).elbo()
    vec = {"vectorize_particles": True, "max_plate_nesting": 1}
    estimators = {
        "Trace_ELBO (K=1)": (vae.guide, Trace_ELBO()),
        "Trace_ELBO (K=4)": (vae.guide, Trace_ELBO(num_particles=4, **vec)),
        "TraceGraph + decaying (K=1)": (pyro_guide, TraceGraph_ELBO()),
        "TraceGraph + decaying (K=2)": (pyro_guide, TraceGraph_ELBO(num_particles=2, **vec)),
        "TraceGraph + decaying (K=4)": (pyro_guide, TraceGraph_ELBO(num_particles=4, **vec)),
        "TraceGraph + decaying (K=8)": (pyro_guide, TraceGraph_ELBO(num_particles=8, **vec)),
        "ScoreFunction decaying (K=1)": (vae.guide, pr.ScoreFunctionELBO(baseline="decaying")),
        "LOO (K=2)": (vae.guide, pr.ScoreFunctionELBO(num_particles=2, baseline="loo")),
        "routed default: LOO (K=4)": (vae.guide, routed),
        "LOO (K=8)": (vae.guide, pr.ScoreFunctionELBO(num_particles=8, baseline="loo")),
        "DisARM (2 pairs)": (vae.guide, DisARM_ELBO(num_pairs=2)),
        "ARMS (n=4)": (vae.guide, ARMS_ELBO(num_particles=4)),
        "Taylor DisARM (1 pair)": (vae.guide, TaylorDisARM_ELBO(num_pairs=1)),
        "Taylor DisARM (2 pairs)": (vae.guide, TaylorDisARM_ELBO(num_pairs=2)),
        "relaxed ST, T=0.5 (biased)": (_relaxed_guide(vae, 0.5), Trace_ELBO()),
    }
    results = _measure(vae, x, estimators, evaluations, quick, log)
    table, rows = _table(results, "routed default: LOO (K=4)")
    text = format_table(HEADERS, rows)
    log(text)
    t = time.perf_counter()
    floor = minibatch_floor(vae, x, *((6, 4, 4) if quick else (48, 8, 16)))
    floor["relative_variance"] = (
        floor["trace_cov"] / results["routed default: LOO (K=4)"].mean_sq_norm
    )
    log(f"  minibatch floor {time.perf_counter() - t:6.1f} s")
    routed_tc = table["routed default: LOO (K=4)"]["trace_cov"]
    for row in table.values():
        row["above_floor_over_routed"] = (row["trace_cov"] - floor["trace_cov"]) / (
            routed_tc - floor["trace_cov"]
        )
    unbiased4 = {
        n: t["relative_variance"]
        for n, t in table.items()
        if t["particles"] <= 4 and "biased" not in n and "Trace" not in n
    }
    best4 = min(unbiased4, key=unbiased4.get)
    best_ratio = unbiased4[best4] / table["routed default: LOO (K=4)"]["relative_variance"]
    floor_text = (
        f"minibatch floor (the exact minibatch gradient's spread over shuffled batches, common "
        f"to every unbiased estimator; {floor['batches']} batches x {floor['draws_per_batch']} "
        f"DisARM draws of {floor['disarm_pairs']} pairs): tr Cov {floor['trace_cov']:.4g} +- "
        f"{floor['se']:.2g}, relative variance {floor['relative_variance']:.3g} = "
        f"{floor['trace_cov'] / routed_tc:.3f} of the routed default's. Above the floor, "
        f"{best4} has {table[best4]['above_floor_over_routed']:.3f} of the routed default's "
        "estimator variance"
    )
    log(floor_text)
    measured, chosen = _select(vae, x, quick)
    log(str(measured))
    log(f"select='measure' picks {chosen}; the full benchmark's best at <= 4 evaluations: {best4}")
    checks = last_batch_check(vae, x)
    for name, verdict in checks.items():
        log(f"smaller last batch, {name}: {verdict}")
    later = later_point(vae, x, quick, log)
    ratio = (
        table["routed default: LOO (K=4)"]["relative_variance"]
        / table["TraceGraph + decaying (K=4)"]["relative_variance"]
    )
    loo_vs_tg = {
        k: table[f"LOO (K={k})" if k != 4 else "routed default: LOO (K=4)"]["relative_variance"]
        <= table[f"TraceGraph + decaying (K={k})"]["relative_variance"]
        for k in (2, 4, 8)
    }
    summary = {
        "quick": quick,
        "best_unbiased_at_4_evaluations": best4,
        "best_over_routed_at_4_evaluations": best_ratio,
        "select_measure_picks": chosen,
        "select_measure_pilot": measured.selection,
        "training": history,
        "final_kl_per_image": kl,
        "estimators": table,
        "minibatch_floor": floor,
        "routed_over_tracegraph_k4": ratio,
        "loo_at_most_tracegraph_same_k": loo_vs_tg,
        "last_batch": checks,
        "later_point": later,
    }
    log(f"routed default / TraceGraph+decaying at K=4: {ratio:.3f} (acceptance: <= 0.5)")
    log(f"best unbiased at <= 4 evaluations: {best4}, {best_ratio:.3f} of the routed default")
    write(
        out,
        "sbn_variance",
        summary,
        "Encoder-gradient variance, sigmoid belief net on digits",
        f"KL {kl:.2f} nats/image after {epochs} epochs; minibatches of {BATCH}, shuffled; "
        f"{evaluations} model evaluations per estimator.\n\n```\n{text}\n```\n\n"
        f"routed / TraceGraph+decaying at K=4: {ratio:.3f}\n\n"
        f"best unbiased at <= 4 evaluations per draw: {best4}, relative variance "
        f"{unbiased4[best4]:.3g} = {best_ratio:.3f} of the routed default's\n\n"
        f"{floor_text}\n\n"
        f"route(select='measure') on shuffled minibatches picks {chosen}:\n\n```\n"
        f"{str(measured).split(chr(10) + 'measured pilot')[-1].strip()}\n```\n\n"
        + "\n".join(f"- smaller last batch, {k}: {v}" for k, v in checks.items())
        + f"\n\n{later['text']}\n",
    )
    return summary
