"""Exact-posterior inference the plugin needs beside VI: batched HMC."""

from pyro_reparam.infer.hmc import HMCResult, hmc

__all__ = ["HMCResult", "hmc"]
