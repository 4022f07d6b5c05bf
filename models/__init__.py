"""Ready model/guide pairs: import as ``pyro_reparam.models``."""

from pyro_reparam.models.discrete_vae import DiscreteVAE

__all__ = ["DiscreteVAE"]
