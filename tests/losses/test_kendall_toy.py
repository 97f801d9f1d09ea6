"""The Kendall report's toy experiment (§2.3): σ's recovered from both initialisations."""

import pytest

from tests.fixtures import load_tool

main = load_tool("kendall_toy").main


def test_sigmas_recovered_from_init_1_and_5():
    results = main(["--steps", "1200"])
    assert set(results) == {1.0, 5.0}
    for sigma1, sigma2 in results.values():
        assert sigma1 == pytest.approx(10.0, rel=0.05)
        assert sigma2 == pytest.approx(1.0, rel=0.05)
