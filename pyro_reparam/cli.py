"""``pyro-reparam``: the command line. Thin: parses arguments, calls the library and models."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _families(args: argparse.Namespace) -> int:
    from pyro_reparam.families import families_table

    table = families_table(markdown=args.markdown)
    if args.kind:
        keep = [line for line in table.splitlines() if f" {args.kind} " in f" {line} "]
        table = "\n".join(table.splitlines()[: 2 if args.markdown else 1] + keep)
    print(table)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from pyro_reparam.demo import run_demo

    return run_demo(out=args.out, device=args.device, quick=args.quick)


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
