"""Test-wide settings; the tiny model configs and inputs live in tests/fixtures.py."""
import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(2)
