"""Guides that pick a variational family per latent site, discrete sites included."""

from pyro_reparam.guides.autoguide import AutoReparamGuide

__all__ = ["AutoReparamGuide"]
