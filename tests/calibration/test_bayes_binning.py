"""Bayes binning (success-prediction paper §3.2) on hand-made counts."""

import numpy as np
import pytest
import torch

from conf_plugins.calibration import BayesBinningCalibrator


def _pos(n_s, n_f, total_s, total_f):
    """P(S|s) = P(s|S) / (P(s|S) + P(s|F) P(F) / (1 - P(F))), literally."""
    p_s, p_f = n_s / total_s, n_f / total_f
    prior_f = total_f / (total_s + total_f)
    return p_s / (p_s + p_f * prior_f / (1 - prior_f))


def _hand_made():
    # M = 4 bins ((m-1)/4, m/4]: bin 0: 1 S + 3 F, bin 1: 2 S + 2 F, bin 2: empty, bin 3: 6 S + 1 F
    scores = [0.0, 0.1, 0.2, 0.25] + [0.3, 0.4, 0.45, 0.5] + [0.8] * 6 + [1.0]
    success = [1, 0, 0, 0] + [1, 1, 0, 0] + [1] * 6 + [0]
    return np.array(scores), np.array(success)


def test_formula_on_hand_made_counts():
    scores, success = _hand_made()
    cal = BayesBinningCalibrator(num_bins=4).fit(scores, success)
    assert cal.success_counts.tolist() == [1, 2, 0, 6]
    assert cal.failure_counts.tolist() == [3, 2, 0, 1]
    b0, b1, b3 = _pos(1, 3, 9, 6), _pos(2, 2, 9, 6), _pos(6, 1, 9, 6)
    assert (b0, b1, b3) == pytest.approx((1 / 4, 1 / 2, 6 / 7))  # = n_S / (n_S + n_F)
    # the empty bin 2 interpolates linearly between the centres of bins 1 and 3
    expected = [b0, b1, (b1 + b3) / 2, b3]
    np.testing.assert_allclose(cal.probabilities(), expected, rtol=1e-12)
    # edges: 0 -> bin 0, 0.25 -> bin 0, 0.5 -> bin 1, 0.5+ -> bin 2, 1 -> bin 3
    probe = torch.tensor([0.0, 0.25, 0.5, 0.5000001, 0.6, 1.0], dtype=torch.float64)
    out = cal.predict(probe)
    assert out.dtype == torch.float64 and out.shape == probe.shape
    np.testing.assert_allclose(out.numpy(), [b0, b0, b1, expected[2], expected[2], b3])


def test_outer_empty_bins_take_the_nearest_value():
    cal = BayesBinningCalibrator(5).fit(np.array([0.5, 0.5, 0.65]), np.array([1, 0, 1]))
    np.testing.assert_allclose(cal.probabilities(), [0.5, 0.5, 0.5, 1.0, 1.0])


def test_degenerate_priors():
    scores = np.array([0.1, 0.5, 0.9])
    assert (BayesBinningCalibrator(4).fit(scores, np.ones(3)).probabilities() == 1).all()
    assert (BayesBinningCalibrator(4).fit(scores, np.zeros(3)).probabilities() == 0).all()


def test_streaming_mask_and_types():
    rng = np.random.default_rng(0)
    scores = rng.random(1000)
    success = rng.random(1000) < scores
    mask = rng.random(1000) < 0.8
    streamed = BayesBinningCalibrator(10)
    for chunk in np.array_split(np.arange(1000), 3):
        streamed.update(
            torch.from_numpy(scores[chunk]).float(), success[chunk], mask=torch.from_numpy(mask[chunk])
        )
    whole = BayesBinningCalibrator(10).fit(scores[mask], success[mask])
    np.testing.assert_array_equal(streamed.probabilities(), whole.probabilities())
    dense = torch.rand(2, 8, 9)
    out = whole.predict(dense)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == dense.shape
    out_np = whole.predict(dense.double().numpy())
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float64
    np.testing.assert_allclose(out_np, out.double().numpy())


def test_state_dict_round_trip_and_mismatches():
    scores, success = _hand_made()
    cal = BayesBinningCalibrator(4).fit(scores, success)
    state = cal.state_dict()
    assert state["num_bins"] == 4 and state["format_version"] == 1
    restored = BayesBinningCalibrator(4).load_state_dict(state)
    np.testing.assert_array_equal(restored.probabilities(), cal.probabilities())
    np.testing.assert_array_equal(
        BayesBinningCalibrator.from_state_dict(state).probabilities(), cal.probabilities()
    )
    with pytest.raises(ValueError, match="bins"):
        BayesBinningCalibrator(10).load_state_dict(state)
    with pytest.raises(ValueError, match="format version"):
        BayesBinningCalibrator(4).load_state_dict({**state, "format_version": 2})
    negative = {**state, "success_counts": -state["success_counts"] - 1}
    with pytest.raises(ValueError, match="non-negative integer"):
        BayesBinningCalibrator(4).load_state_dict(negative)
    fractional = {**state, "failure_counts": state["failure_counts"] + 0.5}
    with pytest.raises(ValueError, match="non-negative integer"):
        BayesBinningCalibrator(4).load_state_dict(fractional)
    with pytest.raises(ValueError, match="shape"):
        BayesBinningCalibrator(4).load_state_dict({**state, "failure_counts": torch.zeros(5)})


def test_errors():
    with pytest.raises(RuntimeError, match="before predict"):
        BayesBinningCalibrator(4).predict(torch.tensor([0.5]))
    cal = BayesBinningCalibrator(4).fit(*_hand_made())
    with pytest.raises(ValueError, match="NaN"):
        cal.predict(torch.tensor([0.5, float("nan")]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cal.predict(np.array([1.2]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cal.update(np.array([-0.2]), np.array([1]))
    with pytest.raises(ValueError, match="0/1"):
        cal.update(np.array([0.2]), np.array([3]))
    with pytest.raises(ValueError, match="shape"):
        cal.update(np.array([0.2, 0.3]), np.array([1]))
