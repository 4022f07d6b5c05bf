"""Ready model/guide pairs: import as ``pyro_reparam.models``."""

from pyro_reparam.models.bnn import BayesianMLP, expected_calibration_error, interval_coverage
from pyro_reparam.models.discrete_vae import DiscreteVAE
from pyro_reparam.models.vae import VAE, Autoencoder

__all__ = [
    "VAE",
    "Autoencoder",
    "BayesianMLP",
    "DiscreteVAE",
    "expected_calibration_error",
    "interval_coverage",
]
