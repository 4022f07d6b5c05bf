import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    """These tiny models run fastest on one intra-op thread (no oversubscription)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
