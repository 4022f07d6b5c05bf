"""``python -m benchmarks [--only NAME ...] [--quick] --out DIR``: run the benchmarks and write
each one's JSON and Markdown figures into DIR."""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

BENCHMARKS = {
    "sbn_variance": "benchmarks.sbn_variance",
    "fit_overhead": "benchmarks.fit_overhead",
    "vae_reference": "benchmarks.vae_reference",
    "dvae_options": "benchmarks.dvae_options",
    "bnn_defaults": "benchmarks.bnn_defaults",
    "bnn_uci": "benchmarks.bnn_uci",
    "bnn_speed": "benchmarks.bnn_speed",
    "bnn_gap": "benchmarks.bnn_gap",
    "bnn_exact": "benchmarks.bnn_exact",
    "vae_route_kl": "benchmarks.vae_route_kl",
    "hmc_vs_nuts": "benchmarks.hmc_vs_nuts",
    "iwae_dreg_snr": "benchmarks.iwae_dreg_snr",
    "sbn_train": "benchmarks.sbn_train",
    "vae_speed": "benchmarks.vae_speed",
    "dvae_speed": "benchmarks.dvae_speed",
    "vae_iwae_dreg": "benchmarks.vae_iwae_dreg",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=None)
    parser.add_argument("--quick", action="store_true", help="small sizes, to check they run")
    args = parser.parse_args(argv)
    for name in args.only or BENCHMARKS:
        print(f"== {name}", flush=True)
        t = time.perf_counter()
        importlib.import_module(BENCHMARKS[name]).run(args.out, quick=args.quick)
        print(f"== {name}: {time.perf_counter() - t:.0f} s, figures in {args.out}", flush=True)


if __name__ == "__main__":
    main()
