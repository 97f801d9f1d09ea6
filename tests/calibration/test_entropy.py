"""Normalised entropy (gradient-metrics paper eq. 1)."""
import math

import pytest
import torch

from conf_plugins.calibration import entropy_from_logits, normalized_entropy


def test_bounds_and_formula():
    probs = torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0],
                          [0.7, 0.1, 0.1, 0.1]], dtype=torch.float64)
    ent = normalized_entropy(probs, dim=1)
    manual = -(0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1)) / math.log(4)
    assert ent.tolist() == pytest.approx([1.0, 0.0, 0.5, manual], abs=1e-12)
    assert not torch.isnan(ent).any()


def test_from_logits_matches_softmax_and_handles_dims():
    logits = torch.randn(2, 19, 5, 6, dtype=torch.float64)
    logits[0, 3] = -float("inf")  # a class with probability exactly 0
    ent = entropy_from_logits(logits, dim=1)
    assert ent.shape == (2, 5, 6)
    assert torch.allclose(ent, normalized_entropy(torch.softmax(logits, 1), dim=1), atol=1e-12)
    last = entropy_from_logits(logits.movedim(1, -1), dim=-1)
    assert torch.allclose(last, ent, atol=1e-12)


def test_single_class_is_rejected():
    with pytest.raises(ValueError, match="at least 2 classes"):
        normalized_entropy(torch.ones(3, 1))
    with pytest.raises(ValueError, match="at least 2 classes"):
        entropy_from_logits(torch.ones(3, 1))


def test_entropy_from_logits_propagates_nan():
    import torch

    from conf_plugins.calibration import entropy_from_logits

    out = entropy_from_logits(torch.tensor([[0.0, float("nan")], [0.0, 0.0]]))
    assert out[0].isnan() and out[1] == 1.0
