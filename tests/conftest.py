"""Test-wide settings; the tiny model configs and inputs live in tests/fixtures.py."""

import os

import numpy as np
import pytest
import torch

from tests.fixtures import run_tiny_demo

# Every subprocess a test starts (tools, torchrun ranks, spawned ranks) prints the Python
# stacks of all its threads if it dies of a signal, so a rare abort explains itself in CI.
os.environ.setdefault("PYTHONFAULTHANDLER", "1")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """A folder where the tiny main job has run once (shared by the demo and docs tests)."""
    folder = tmp_path_factory.mktemp("tiny_demo")
    run_tiny_demo(folder)
    return folder
