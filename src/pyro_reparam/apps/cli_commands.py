"""What each ``pyro-reparam`` command does once its arguments are parsed."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

CHECKPOINT = "checkpoint.pt"


def families(args: argparse.Namespace) -> int:
    from pyro_reparam.families import families_table

    table = families_table(markdown=args.markdown)
    if args.kind:
        keep = [line for line in table.splitlines() if f" {args.kind} " in f" {line} "]
        table = "\n".join(table.splitlines()[: 2 if args.markdown else 1] + keep)
    print(table)
    return 0


def demo(args: argparse.Namespace) -> int:
    from pyro_reparam.apps.demo import run_demo

    return run_demo(out=args.out, device=args.device, quick=args.quick)


def job(args: argparse.Namespace):
    from pyro_reparam.apps.image_jobs import ImageJob

    return ImageJob(
        data=args.data,
        data_key=args.data_key,
        label_key=args.label_key,
        resume=args.resume,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
        out=run_dir(args),
        seed=args.seed,
        iw_samples=args.iw_samples,
        progress=not args.quiet,
    )


def train_vae(args: argparse.Namespace) -> int:
    from pyro_reparam.apps.image_jobs import train_vae

    train_vae(
        job(args),
        latent_dim=args.latent_dim,
        likelihood=args.likelihood,
        kl=args.estimator,
        iwae=args.iwae,
        hidden=args.hidden,
        conv=args.conv,
    )
    return 0


def train_dvae(args: argparse.Namespace) -> int:
    from pyro_reparam.apps.image_jobs import train_dvae

    train_dvae(
        job(args),
        latent=args.latent,
        num_latents=args.num_latents,
        num_categories=args.num_categories,
        estimator=args.estimator,
        hidden=args.hidden,
        temperature=args.temperature,
    )
    return 0


def train_bnn(args: argparse.Namespace) -> int:
    from pyro_reparam.apps.bnn_job import BNNJob, train_bnn

    train_bnn(
        BNNJob(
            task=args.task,
            data=args.data,
            target=args.target,
            guide=args.guide,
            prior=args.prior,
            inference=args.inference,
            hmc_samples=args.hmc_samples,
            hidden=tuple(args.hidden),
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            device=args.device,
            out=run_dir(args),
            seed=args.seed,
            progress=not args.quiet,
            resume=args.resume,
        )
    )
    return 0


def diagnose(args: argparse.Namespace) -> int:
    import arviz as az

    from pyro_reparam.diagnostics import diagnose

    run = Path(args.run_dir)
    found = [p for p in (run / "diagnostics" / "datatree.nc", run / "datatree.nc") if p.is_file()]
    if not found:
        raise FileNotFoundError(
            f"diagnose: no datatree.nc in {run} or {run / 'diagnostics'}; runs of "
            "`pyro-reparam train bnn` write one, or save pr.to_datatree(...) there"
        )
    dt = az.from_netcdf(found[0]).load()
    report = diagnose(dt, run / "diagnostics")
    print(report["text"])
    print(report["summary"].to_string())
    for chain, (k, reading) in enumerate(
        zip(report["vi_khat"], report["vi_khat_reading"], strict=True)
    ):
        print(f"VI k-hat, chain {chain}: {k:.2f} ({reading})")
    if "loo" in report:
        print(report["loo"])
    print(
        f"wrote {run / 'diagnostics'}/ (the full tables in summary.csv and sites.csv): "
        + ", ".join(report["files"])
    )
    return 0


def run_dir(args: argparse.Namespace) -> Path:
    """``--out``, or ``runs/<model>-<file stem>`` for a user's file (``runs/<model>`` for the
    embedded data); a folder holding a checkpoint is used only with ``--resume`` (continue) or
    ``--overwrite`` (start over), never silently overwritten."""
    if args.out is not None:
        out = Path(args.out)
    else:
        builtin = ("digits", "diabetes", "toy")
        stem = "" if args.data in builtin else "-" + Path(args.data).stem
        out = Path("runs") / f"{args.model}{stem}"
    checkpoint = out / CHECKPOINT
    if args.resume and not checkpoint.is_file():
        raise FileNotFoundError(f"--resume: no {CHECKPOINT} in {out} to continue from")
    if checkpoint.is_file() and not (args.resume or args.overwrite):
        raise FileExistsError(
            f"{out} holds a checkpoint of an earlier run; pass --resume to continue it, "
            "--overwrite to start over, or --out for another folder"
        )
    if args.overwrite and out.is_dir():
        shutil.rmtree(out)
    return out
