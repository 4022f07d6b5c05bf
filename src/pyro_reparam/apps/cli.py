"""``pyro-reparam``: the command line. Thin: parses arguments, calls the library and models."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _families(args: argparse.Namespace) -> int:
    from pyro_reparam.families import families_table

    table = families_table(markdown=args.markdown)
    if args.kind:
        keep = [line for line in table.splitlines() if f" {args.kind} " in f" {line} "]
        table = "\n".join(table.splitlines()[: 2 if args.markdown else 1] + keep)
    print(table)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from pyro_reparam.apps.demo import run_demo

    return run_demo(out=args.out, device=args.device, quick=args.quick)


def _job(args: argparse.Namespace):
    from pyro_reparam.apps.image_jobs import ImageJob

    return ImageJob(
        data=args.data,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
        out=Path(args.out),
        seed=args.seed,
        iw_samples=args.iw_samples,
        progress=not args.quiet,
    )


def _train_vae(args: argparse.Namespace) -> int:
    from pyro_reparam.apps.image_jobs import train_vae

    train_vae(_job(args), latent_dim=args.latent_dim, likelihood=args.likelihood,
              kl=args.estimator, iwae=args.iwae, hidden=args.hidden, conv=args.conv)  # fmt: skip
    return 0


def _train_dvae(args: argparse.Namespace) -> int:
    from pyro_reparam.apps.image_jobs import train_dvae

    train_dvae(_job(args), latent=args.latent, num_latents=args.num_latents,
               num_categories=args.num_categories, estimator=args.estimator,
               hidden=args.hidden, temperature=args.temperature)  # fmt: skip
    return 0


def _prior(value: str) -> str | float:
    if value in ("fan_in", "nngp"):
        return value
    try:
        scale = float(value)
    except ValueError:
        scale = -1.0
    if not scale > 0:
        raise argparse.ArgumentTypeError(
            f"expected fan_in, nngp or a positive scale, got {value!r}"
        )
    return scale


def _train_bnn(args: argparse.Namespace) -> int:
    from pyro_reparam.apps.bnn_job import BNNJob, train_bnn

    train_bnn(BNNJob(task=args.task, data=args.data, target=args.target, guide=args.guide,
                     prior=args.prior, inference=args.inference, hmc_samples=args.hmc_samples,
                     hidden=tuple(args.hidden), epochs=args.epochs, batch_size=args.batch_size,
                     lr=args.lr, device=args.device, out=Path(args.out), seed=args.seed,
                     progress=not args.quiet))  # fmt: skip
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    import arviz as az

    from pyro_reparam.diagnostics import diagnose

    run = Path(args.run_dir)
    found = [p for p in (run / "diagnostics" / "datatree.nc", run / "datatree.nc") if p.is_file()]
    if not found:
        raise SystemExit(
            f"pyro-reparam diagnose: no datatree.nc in {run} or {run / 'diagnostics'}; runs of "
            "`pyro-reparam train bnn` write one, or save pr.to_datatree(...) there"
        )
    dt = az.from_netcdf(found[0]).load()
    report = diagnose(dt, run / "diagnostics")
    print(report["summary"].to_string())
    for chain, (k, reading) in enumerate(zip(report["vi_khat"], report["vi_khat_reading"],
                                             strict=True)):  # fmt: skip
        print(f"VI k-hat, chain {chain}: {k:.2f} ({reading})")
    if "loo" in report:
        print(report["loo"])
    print(f"wrote {run / 'diagnostics'}/: " + ", ".join(report["files"]))
    return 0


def _common(p: argparse.ArgumentParser, out: str, epochs: int) -> None:
    p.add_argument("--data", default="digits",
                   help="'digits' (embedded) or a path to .npz / MNIST IDX images")  # fmt: skip
    p.add_argument("--epochs", type=_positive, default=epochs)
    p.add_argument("--batch-size", type=_positive, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default=out, help=f"output folder (default: {out})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iw-samples", type=_positive, default=500,
                   help="importance samples for the test log-likelihood")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-reparam",
        description="Reparameterization-aware variational inference for Pyro.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    fam = sub.add_parser("families", help="list every declared family and how it is sampled")
    fam.add_argument("--markdown", action="store_true", help="print a Markdown table")
    fam.add_argument(
        "--kind",
        choices=["pathwise", "implicit", "relaxed", "score_function"],
        help="only families of this kind",
    )
    fam.set_defaults(func=_families)

    demo = sub.add_parser("demo", help="the main job on the embedded data (what `make demo` runs)")
    demo.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    demo.add_argument("--quick", action="store_true", help="a few steps only, for smoke tests")
    demo.set_defaults(func=_demo)

    train = sub.add_parser("train", help="train a ready model and write metrics and figures")
    models = train.add_subparsers(dest="model", metavar="MODEL", required=True)
    vae = models.add_parser("vae", help="Gaussian-latent VAE (and a plain autoencoder)")
    _common(vae, "runs/vae", 100)
    vae.add_argument("--latent-dim", type=_positive, default=2)
    vae.add_argument("--likelihood", default="continuous_bernoulli",
                     choices=["bernoulli", "continuous_bernoulli", "gaussian"])  # fmt: skip
    vae.add_argument("--estimator", default="analytic", choices=["analytic", "mc"],
                     help="KL term: closed form (TraceMeanField_ELBO) or Monte Carlo")  # fmt: skip
    vae.add_argument("--iwae", type=_positive, default=None, metavar="K",
                     help="train the importance-weighted bound with K particles")  # fmt: skip
    vae.add_argument("--hidden", type=_positive, default=256)
    vae.add_argument("--conv", action="store_true", help="convolutional encoder and decoder")
    vae.set_defaults(func=_train_vae)
    dvae = models.add_parser("dvae", help="VAE with binary or categorical latents (routed)")
    _common(dvae, "runs/dvae", 100)
    dvae.add_argument("--latent", default="bernoulli", choices=["bernoulli", "categorical"])
    dvae.add_argument("--num-latents", type=_positive, default=64)
    dvae.add_argument("--num-categories", type=_positive, default=10)
    dvae.add_argument("--estimator", default="score", choices=["score", "relaxed", "enumerate"])
    dvae.add_argument("--hidden", type=_positive, default=200)
    dvae.add_argument("--temperature", type=float, default=1.0)
    dvae.set_defaults(func=_train_dvae)
    bnn = models.add_parser("bnn", help="Bayesian MLP for regression or classification")
    bnn.add_argument("--data", default="diabetes", help="diabetes, digits, toy, or a .csv/.npz")
    bnn.add_argument("--target", default=None, help="target column (CSV) or array (NPZ)")
    bnn.add_argument("--task", default=None, choices=["regression", "classification"])
    bnn.add_argument("--guide", default="local", choices=["meanfield", "local", "flipout"])
    bnn.add_argument("--prior", default="fan_in", type=_prior,
                     help="fan_in, nngp (scales by the infinite-width marginal likelihood; "
                          "ReLU regression) or a positive weight scale")  # fmt: skip
    bnn.add_argument("--inference", default="vi", choices=["vi", "hmc"],
                     help="variational fit (--guide) or the exact posterior by HMC "
                          "(homoscedastic noise; small networks and data)")  # fmt: skip
    bnn.add_argument("--hmc-samples", type=_positive, default=300,
                     help="HMC: warm-up and kept iterations per chain (16 chains)")  # fmt: skip
    bnn.add_argument("--hidden", type=_positive, nargs="+", default=[50])
    bnn.add_argument("--epochs", type=_positive, default=500)
    bnn.add_argument("--batch-size", type=_positive, default=128)
    bnn.add_argument("--lr", type=float, default=0.01)
    bnn.add_argument("--device", default="cpu")
    bnn.add_argument("--out", default="runs/bnn")
    bnn.add_argument("--seed", type=int, default=0)
    bnn.add_argument("--quiet", action="store_true")
    bnn.set_defaults(func=_train_bnn)

    diag = sub.add_parser("diagnose", help="ArviZ summary, k-hat, LOO and plots of a run")
    diag.add_argument("run_dir", help="a run folder holding datatree.nc (or diagnostics/)")
    diag.set_defaults(func=_diagnose)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
