import pyro
import pytest
import torch

from pyro_reparam import families


def pytest_configure(config):
    """One torch thread per test process: the suite runs one process per core (pytest -n auto),
    and more threads only oversubscribe a small machine."""
    torch.set_num_threads(1)


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_pyro():
    """Each test starts with an empty param store, a fixed seed, validation on and the family
    registry as the package declares it: a family a test declares is gone after it."""
    registry, delegates = dict(families._REGISTRY), dict(families._DELEGATES)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()
    families._REGISTRY.clear()
    families._REGISTRY.update(registry)
    families._DELEGATES.clear()
    families._DELEGATES.update(delegates)
