import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """These tests use tiny tensors, where intra-op threads only add overhead; on a shared,
    oversubscribed CPU two threads made them ~10x slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
