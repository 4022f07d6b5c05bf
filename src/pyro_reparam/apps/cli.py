"""``pyro-reparam``: the command line. Thin: parses arguments, calls the library and models.

Every failure past argument parsing is one line on stderr, ``pyro-reparam: error: ...``, and
exit status 2 (``--debug`` shows the traceback instead); an interrupted run says how to resume
it and exits with 130.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pyro_reparam.apps import cli_commands as run
from pyro_reparam.apps.cli_types import at_least_two, learning_rate, positive, positive_float, prior


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pyro-reparam")
    except PackageNotFoundError:
        from pyro_reparam import __version__

        return __version__


class _Formatter(argparse.HelpFormatter):
    """Shows each flag's default in its help line (unless the help already says it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        quiet = (None, False, argparse.SUPPRESS)
        hidden = any(action.default is q for q in quiet)
        if "default" in text or hidden or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _global_flags(p: argparse.ArgumentParser, top: bool) -> None:
    """``--threads`` and ``--debug``, on the top level and on every command."""
    default = {} if top else {"default": argparse.SUPPRESS}
    p.add_argument(
        "--threads",
        type=positive,
        **({"default": None} | default),
        help="CPU threads for torch (default: $PYRO_REPARAM_THREADS, else "
        "$OMP_NUM_THREADS, else 1: the ready models are small)",
    )
    p.add_argument(
        "--debug", action="store_true", **default, help="show the Python traceback of an error"
    )


def _run_flags(p: argparse.ArgumentParser) -> None:
    """Where a training run writes, and what happens to an earlier run there."""
    p.add_argument(
        "--out",
        default=None,
        help="output folder (default: runs/MODEL, or runs/MODEL-FILE for a file)",
    )
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", action="store_true", help="continue the run checkpointed in the output folder"
    )
    again.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the run in the output folder and start over",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _image_flags(p: argparse.ArgumentParser, epochs: int) -> None:
    p.add_argument(
        "--data", default="digits", help="'digits' (embedded) or a path to .npz / MNIST IDX images"
    )
    p.add_argument(
        "--data-key", default=None, help=".npz array of the images (default: images, x, X or data)"
    )
    p.add_argument(
        "--label-key", default=None, help=".npz array of the labels (default: labels, y or targets)"
    )
    p.add_argument("--epochs", type=positive, default=epochs, help="passes over the data")
    p.add_argument("--batch-size", type=positive, default=64, help="images per step")
    p.add_argument("--lr", type=learning_rate, default=1e-3, help="Adam learning rate")
    p.add_argument(
        "--iw-samples",
        type=positive,
        default=500,
        help="importance samples for the test log-likelihood",
    )
    _run_flags(p)
    _global_flags(p, top=False)


def _add_families(sub) -> None:
    fam = sub.add_parser(
        "families",
        help="list every declared family and how it is sampled",
        formatter_class=_Formatter,
    )
    fam.add_argument("--markdown", action="store_true", help="print a Markdown table")
    fam.add_argument(
        "--kind",
        choices=["pathwise", "implicit", "relaxed", "score_function"],
        help="only families of this kind",
    )
    _global_flags(fam, top=False)
    fam.set_defaults(func=run.families)


def _add_demo(sub) -> None:
    demo = sub.add_parser(
        "demo",
        help="the main job on the embedded data (what `make demo` runs)",
        formatter_class=_Formatter,
    )
    demo.add_argument("--out", default="runs/demo", help="output folder")
    demo.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    demo.add_argument("--quick", action="store_true", help="a few steps only, for smoke tests")
    _global_flags(demo, top=False)
    demo.set_defaults(func=run.demo)


def _add_vae(models) -> None:
    vae = models.add_parser(
        "vae", help="Gaussian-latent VAE (and a plain autoencoder)", formatter_class=_Formatter
    )
    _image_flags(vae, 100)
    vae.add_argument("--latent-dim", type=positive, default=2, help="latent dimensions")
    vae.add_argument(
        "--likelihood",
        default="continuous_bernoulli",
        choices=["bernoulli", "continuous_bernoulli", "gaussian"],
        help="pixel likelihood",
    )
    vae.add_argument(
        "--estimator",
        default="analytic",
        choices=["analytic", "mc"],
        help="KL term: closed form (TraceMeanField_ELBO) or Monte Carlo",
    )
    vae.add_argument(
        "--iwae",
        type=at_least_two,
        default=None,
        metavar="K",
        help="train the importance-weighted bound with K particles",
    )
    vae.add_argument("--hidden", type=positive, default=256, help="hidden units")
    vae.add_argument("--conv", action="store_true", help="convolutional encoder and decoder")
    vae.set_defaults(func=run.train_vae, model="vae")


def _add_dvae(models) -> None:
    dvae = models.add_parser(
        "dvae", help="VAE with binary or categorical latents (routed)", formatter_class=_Formatter
    )
    _image_flags(dvae, 100)
    dvae.add_argument(
        "--latent", default="bernoulli", choices=["bernoulli", "categorical"], help="latent family"
    )
    dvae.add_argument("--num-latents", type=positive, default=64, help="latent variables")
    dvae.add_argument(
        "--num-categories", type=at_least_two, default=10, help="values per categorical latent"
    )
    dvae.add_argument(
        "--estimator",
        default="score",
        choices=["score", "relaxed", "enumerate"],
        help="gradient estimator of the latents",
    )
    dvae.add_argument("--hidden", type=positive, default=200, help="hidden units")
    dvae.add_argument(
        "--temperature",
        type=positive_float,
        default=1.0,
        help="relaxation temperature (--estimator relaxed)",
    )
    dvae.set_defaults(func=run.train_dvae, model="dvae")


def _add_bnn(models) -> None:
    bnn = models.add_parser(
        "bnn", help="Bayesian MLP for regression or classification", formatter_class=_Formatter
    )
    bnn.add_argument(
        "--data", default="diabetes", help="diabetes, digits, toy, or a path to a .csv or .npz file"
    )
    bnn.add_argument(
        "--target",
        default=None,
        help="target column (CSV; default the last) or array (NPZ; default y)",
    )
    bnn.add_argument(
        "--task",
        default=None,
        choices=["regression", "classification"],
        help="default: classification for a few integer classes",
    )
    bnn.add_argument(
        "--guide",
        default="local",
        choices=["meanfield", "local", "flipout"],
        help="how the likelihood term is estimated",
    )
    bnn.add_argument(
        "--prior",
        default="fan_in",
        type=prior,
        help="fan_in, nngp (scales by the infinite-width marginal likelihood; "
        "ReLU regression) or a positive weight scale",
    )
    bnn.add_argument(
        "--inference",
        default="vi",
        choices=["vi", "hmc"],
        help="variational fit (--guide) or the exact posterior by HMC "
        "(homoscedastic noise; small networks and data)",
    )
    bnn.add_argument(
        "--hmc-samples",
        type=positive,
        default=300,
        help="HMC: warm-up and kept iterations per chain (16 chains)",
    )
    bnn.add_argument(
        "--hidden", type=positive, nargs="+", default=[50], help="hidden units per layer"
    )
    bnn.add_argument("--epochs", type=positive, default=500, help="passes over the data")
    bnn.add_argument("--batch-size", type=positive, default=128, help="rows per step")
    bnn.add_argument("--lr", type=learning_rate, default=0.01, help="Adam learning rate")
    _run_flags(bnn)
    _global_flags(bnn, top=False)
    bnn.set_defaults(func=run.train_bnn, model="bnn")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-reparam",
        description="Reparameterization-aware variational inference for Pyro.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _global_flags(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_families(sub)
    _add_demo(sub)
    train = sub.add_parser(
        "train",
        help="train a ready model and write metrics and figures",
        formatter_class=_Formatter,
    )
    models = train.add_subparsers(dest="model", metavar="MODEL", required=True)
    _add_vae(models)
    _add_dvae(models)
    _add_bnn(models)
    diag = sub.add_parser(
        "diagnose", help="ArviZ summary, k-hat, LOO and plots of a run", formatter_class=_Formatter
    )
    diag.add_argument("run_dir", help="a run folder holding datatree.nc (or diagnostics/)")
    _global_flags(diag, top=False)
    diag.set_defaults(func=run.diagnose)
    return parser


def _one_line(err: BaseException) -> str:
    """The first line of an error's message (Pyro appends trace shapes below it)."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    return text if isinstance(err, (ValueError, OSError)) else f"{type(err).__name__}: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    from pyro_reparam.apps.threads import apply_thread_policy

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        apply_thread_policy(args.threads)
        return args.func(args)
    except KeyboardInterrupt:
        print("pyro-reparam: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    except Exception as err:  # the one place every library error becomes one line
        if args.debug:
            raise
        print(f"pyro-reparam: error: {_one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
