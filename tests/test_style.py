"""The code is formatted and linted by the pinned ruff (configuration: pyproject.toml)."""

import subprocess
import sys

import pytest

from tests.fixtures import ROOT


@pytest.mark.parametrize("command", [["format", "--check", "."], ["check", "."]])
def test_ruff(command):
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *command], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, (
        f"python -m ruff {' '.join(command)} found problems; run "
        f"`python -m ruff format . && python -m ruff check --fix .`:\n"
        + result.stdout[-3000:]
        + result.stderr[-2000:]
    )
