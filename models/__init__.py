"""Ready model/guide pairs: import as ``pyro_reparam.models``."""

from pyro_reparam.models.discrete_vae import DiscreteVAE
from pyro_reparam.models.vae import VAE, Autoencoder

__all__ = ["VAE", "Autoencoder", "DiscreteVAE"]
