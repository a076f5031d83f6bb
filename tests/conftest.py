import pytest
import torch


@pytest.fixture(scope="module")
def single_thread():
    """Tiny networks run fastest on one thread (and do not fight other processes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
