import pytest
import torch

import reward_forcing


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU with reward_forcing built with CUDA kernels")
    for item in items:
        if "gpu" in item.keywords and not (torch.cuda.is_available() and reward_forcing.HAS_CUDA_KERNELS):
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _one_thread():
    """The tests' tensors are tiny: one thread is fastest and avoids stalls on a 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
