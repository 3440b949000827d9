import os
import warnings

import pytest
import torch

warnings.filterwarnings("ignore", message=".*is found to be not a nn.Module.*")
os.environ.setdefault("COMPACTNAS_TEST", "1")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield
