"""Entropy, normalised entropy (gradient-metrics paper eq. 1) and the mutual information of
sampled predictions, against scipy and plain loops; 0 · log 0 = 0 everywhere."""

import math

import pytest
import torch
from scipy.stats import entropy as scipy_entropy

from conf_plugins.calibration import entropy_from_logits, normalized_entropy
from conf_plugins.calibration.entropy import entropy, mutual_information


def test_bounds_and_formula():
    probs = torch.tensor(
        [[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.7, 0.1, 0.1, 0.1]],
        dtype=torch.float64,
    )
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


def test_entropy_matches_scipy_along_any_dim():
    probs = torch.rand(3, 5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    probs[0, 1:3] = 0.0  # exact zeros: 0 · log 0 = 0
    probs /= probs.sum(dim=1, keepdim=True)
    ent = entropy(probs, dim=1)
    assert ent.shape == (3, 4)
    assert torch.allclose(ent, torch.from_numpy(scipy_entropy(probs.numpy(), axis=1)), atol=1e-12)
    assert torch.equal(entropy(probs.movedim(1, -1)), ent)  # dim=-1 by default


def test_zero_probabilities_add_nothing():
    assert entropy(torch.tensor([1.0, 0.0, 0.0])) == 0.0
    half = entropy(torch.tensor([0.5, 0.5, 0.0, 0.0]))
    assert half.item() == pytest.approx(math.log(2), abs=1e-7) and not half.isnan()
    samples = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])  # two identical one-hot samples
    assert mutual_information(samples, sample_dim=0, class_dim=-1).tolist() == [0.0]


def test_mutual_information_matches_a_sample_loop():
    g = torch.Generator().manual_seed(1)
    samples = (torch.randn(6, 2, 5, 3, generator=g, dtype=torch.float64) * 3).softmax(dim=2)
    mi = mutual_information(samples, sample_dim=0, class_dim=2)
    assert mi.shape == (2, 3)
    for n in range(2):
        for j in range(3):
            per_sample = [samples[m, n, :, j] for m in range(6)]
            mean = sum(per_sample) / 6
            h = -sum(float(p) * math.log(float(p)) for p in mean)
            expected = sum(-sum(float(p) * math.log(float(p)) for p in q) for q in per_sample) / 6
            assert mi[n, j].item() == pytest.approx(h - expected, abs=1e-12)
    # the same with the dims in the other order (classes before samples), negative indices
    moved = samples.permute(1, 2, 3, 0)  # (N, C, w, M)
    assert torch.allclose(mutual_information(moved, sample_dim=-1, class_dim=1), mi, atol=1e-15)


def test_mutual_information_is_never_negative():
    same = torch.full((4, 7, 3), 1 / 3)  # agreeing samples: rounding alone could go below 0
    mi = mutual_information(same + 1e-9 * torch.rand(4, 7, 3), sample_dim=0, class_dim=2)
    assert (mi >= 0).all() and mi.max() < 1e-6
    with pytest.raises(ValueError, match="sample_dim and class_dim"):
        mutual_information(same, sample_dim=2, class_dim=-1)
