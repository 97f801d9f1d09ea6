"""CalibrationStats: binning at edges, input handling, merging, state and error cases."""

import io
import math

import numpy as np
import pytest
import torch

from conf_plugins.calibration import CalibrationStats, normalized_entropy

from ._data import quantised_sample


def test_edges_go_to_the_bin_below_and_zero_to_the_first():
    conf = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.7, 1.0], dtype=torch.float64)
    stats = CalibrationStats().update(conf, torch.ones(6, dtype=torch.bool))
    count = stats.reliability(10)["count"]
    # bins ((k-1)/10, k/10]: 0 -> bin 0, 0.1 -> bin 0, 0.3 -> bin 2, 0.5 -> 4, 0.7 -> 6, 1 -> 9
    assert count.tolist() == [2, 0, 1, 0, 1, 0, 1, 0, 0, 1]


def test_edges_are_compared_as_exact_float_values():
    # float32(0.3) = 0.30000001192... lies above the edge 0.3 (bin (0.3, 0.4]); float32(0.5)
    # is exactly 0.5 (bin (0.4, 0.5]); float32(0.7) = 0.69999998807... is in (0.6, 0.7]
    conf = torch.tensor([0.3, 0.5, 0.7], dtype=torch.float32)
    stats = CalibrationStats().update(conf, torch.ones(3, dtype=torch.bool))
    assert np.flatnonzero(stats.reliability(10)["count"]).tolist() == [3, 4, 6]


def test_fine_bins_agree_with_float64_comparison_at_every_edge():
    K = 6000
    edges = torch.arange(K + 1, dtype=torch.float64) / K
    near = torch.cat(
        [edges, torch.nextafter(edges, torch.tensor(2.0)), torch.nextafter(edges, torch.tensor(-1.0))]
    ).clamp(0, 1)
    for dtype in (torch.float64, torch.float32):
        values = near.to(dtype)
        stats = CalibrationStats(K).update(values, torch.ones_like(values, dtype=torch.bool))
        expected = torch.bucketize(values.double(), edges[1:-1], right=False)  # (e_j, e_j+1]
        assert torch.equal(stats._state[0, 1], torch.bincount(expected, minlength=K).double())


def test_numpy_int_and_half_inputs():
    conf, correct = quantised_sample(500, seed=7)
    ref = CalibrationStats().update(torch.from_numpy(conf), torch.from_numpy(correct)).compute()
    from_numpy = CalibrationStats().update(conf, correct.astype(np.int64)).compute()
    assert from_numpy == ref
    as_float = CalibrationStats().update(conf.reshape(20, 25), correct.reshape(20, 25) * 1.0)
    assert as_float.compute() == ref
    reversed_view = CalibrationStats().update(conf[::-1], correct[::-1]).compute()
    assert reversed_view == pytest.approx(ref, rel=1e-12)
    half = torch.from_numpy(conf).half()  # upcast exactly to float32
    assert (
        CalibrationStats().update(half, correct).compute()["count"]
        == CalibrationStats().update(half.float(), correct).compute()["count"]
        == 500
    )


def test_mask_equals_selection_and_ignores_garbage():
    conf, correct = quantised_sample(1000, seed=8)
    mask = np.random.default_rng(0).random(1000) < 0.7
    garbage = conf.copy()
    garbage[~mask] = np.nan
    masked = CalibrationStats().update(garbage, correct, mask=mask)
    selected = CalibrationStats().update(conf[mask], correct[mask])
    assert torch.equal(masked._state, selected._state)
    assert masked.count == mask.sum()


def test_merge_and_add_equal_one_update_on_the_concatenation():
    conf, correct = quantised_sample(2000, seed=9)
    whole = CalibrationStats().update(conf, correct)
    a = CalibrationStats().update(conf[:700], correct[:700])
    b = CalibrationStats().update(conf[700:], correct[700:])
    assert torch.allclose((a + b)._state, whole._state, rtol=1e-12, atol=0)
    assert a.count == 700  # __add__ leaves its operands alone
    assert a.merge(b) is a
    assert a.compute() == pytest.approx(whole.compute(), rel=1e-12)
    with pytest.raises(ValueError, match="fine bins"):
        a.merge(CalibrationStats(3000))


def test_state_dict_round_trip_and_mismatch():
    conf, correct = quantised_sample(800, seed=10)
    stats = CalibrationStats().update(conf, correct, entropy=np.full(800, 0.25))
    buffer = io.BytesIO()
    torch.save(stats.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer)
    restored = CalibrationStats().load_state_dict(state)
    assert restored.compute() == stats.compute()
    assert CalibrationStats.from_state_dict(state).compute() == stats.compute()
    with pytest.raises(ValueError, match="fine bins"):
        CalibrationStats(3000).load_state_dict(state)
    with pytest.raises(ValueError, match="format version"):
        CalibrationStats().load_state_dict({**state, "format_version": 99})
    bad = {**state, "count": state["count"] * -1}
    with pytest.raises(ValueError, match="counts"):
        CalibrationStats().load_state_dict(bad)
    with pytest.raises(ValueError, match="lacks"):
        CalibrationStats().load_state_dict({k: v for k, v in state.items() if k != "sum_conf"})


def test_reliability_is_consistent_with_compute():
    conf, correct = quantised_sample(3000, seed=11)
    stats = CalibrationStats().update(conf, correct)
    rel = stats.reliability(15)
    assert rel["edges"].shape == (16,) and rel["count"].sum() == 3000
    full = rel["count"] > 0
    ece = rel["count"][full] * np.abs(rel["accuracy"][full] - rel["mean_confidence"][full])
    assert ece.sum() / 3000 == pytest.approx(stats.compute(num_bins=15)["ECE"], rel=1e-12)
    bin_of = np.minimum(np.ceil(conf * 15).astype(int) - 1, 14).clip(0)
    k = int(np.flatnonzero(full)[-1])
    assert rel["accuracy"][k] == pytest.approx(correct[bin_of == k].mean())
    assert rel["mean_confidence"][k] == pytest.approx(conf[bin_of == k].mean())
    sparse = CalibrationStats().update(np.array([0.95]), np.array([True])).reliability(10)
    assert np.isnan(sparse["accuracy"][:9]).all() and sparse["accuracy"][9] == 1.0


def test_mean_entropy_is_reported_when_given():
    probs = torch.softmax(torch.randn(50, 4, dtype=torch.float64), dim=1)
    conf, pred = probs.max(1)
    labels = torch.randint(0, 4, (50,))
    ent = normalized_entropy(probs, dim=1)
    mask = torch.arange(50) < 30
    stats = CalibrationStats().update(conf, pred == labels, mask=mask, entropy=ent)
    assert stats.compute()["mean_entropy"] == pytest.approx(ent[:30].mean().item(), rel=1e-12)
    assert "mean_entropy" not in CalibrationStats().update(conf, pred == labels).compute()


def test_empty_input_is_a_no_op_and_compute_refuses_it():
    stats = CalibrationStats()
    stats.update(torch.zeros(0), torch.zeros(0, dtype=torch.bool))
    stats.update(np.array([0.4, 0.6]), np.array([1, 0]), mask=np.zeros(2, dtype=bool))
    assert stats.count == 0
    with pytest.raises(ValueError, match="no samples"):
        stats.compute()


@pytest.mark.parametrize(
    "conf, correct, mask, match",
    [
        ([0.2, float("nan")], [1, 0], None, "NaN or inf"),
        ([0.2, float("inf")], [1, 0], None, "NaN or inf"),
        ([0.2, 1.5], [1, 0], None, r"\[0, 1\]"),
        ([-0.1, 0.5], [1, 0], None, r"\[0, 1\]"),
        ([0.2, 0.5], [1, 2], None, "0/1"),
        ([0.2, 0.5], [1.0, 0.5], None, "0/1"),
        ([0.2, 0.5], [1, 0, 1], None, "shape"),
        ([0.2, 0.5], [1, 0], [True], "shape"),
        ([0.2, 0.5], [1, 0], [1, 0], "bool"),
        ([0.2, float("nan")], [1, 0], [True, True], "NaN"),
    ],
)
def test_bad_input_raises_value_error(conf, correct, mask, match):
    with pytest.raises(ValueError, match=match):
        CalibrationStats().update(
            np.array(conf), np.array(correct), mask=None if mask is None else np.array(mask)
        )


def test_compute_rejects_inexact_bins_and_thresholds():
    stats = CalibrationStats().update(np.array([0.4, 0.8]), np.array([0, 1]))
    with pytest.raises(ValueError, match="divide"):
        stats.compute(num_bins=7)
    with pytest.raises(ValueError, match="edge"):
        stats.compute(threshold=0.12345)
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        stats.compute(threshold=1.5)
    assert math.isnan(stats.compute(threshold=1.0)["precision"])  # nothing is confident
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):  # c == 0 would count as confident
        stats.compute(threshold=0.0)
    with pytest.raises(ValueError):
        CalibrationStats(0)


def test_chunked_accumulation_matches_one_pass(monkeypatch):
    from conf_plugins.calibration import stats as stats_module

    conf, correct = quantised_sample(1000, seed=12)
    mask = np.arange(1000) % 3 > 0
    one_pass = CalibrationStats().update(conf, correct, mask=mask)
    monkeypatch.setattr(stats_module, "_CHUNK", 37)
    chunked = CalibrationStats().update(conf, correct, mask=mask)
    assert torch.allclose(chunked._state, one_pass._state, rtol=1e-12, atol=0)
    assert chunked.count == mask.sum()


def test_the_fused_kernel_counts_exactly_as_the_torch_path(monkeypatch):
    """Float32 CPU values go through the compiled bin statistics: the same bins (edges, 0, 1,
    masked entries), sums equal to float rounding."""
    import importlib

    stats_module = importlib.import_module("conf_plugins.calibration.stats")
    if stats_module.fused_kernel() is None:
        pytest.skip("the kernel is not built here (tests/calibration/test_pixel_confidence.py requires it)")
    g = torch.Generator().manual_seed(0)
    conf = torch.rand(300_000, generator=g)
    conf[:500], conf[500:1000] = 0.0, 1.0
    conf[1000:2500] = torch.arange(1500, dtype=torch.float64).div(1500).float()  # the bin edges
    correct, mask = torch.rand(300_000, generator=g) < 0.8, torch.rand(300_000, generator=g) < 0.9
    fused = CalibrationStats(1500).update(conf, correct, mask=mask)
    monkeypatch.setattr(stats_module, "fused_kernel", lambda: None)
    plain = CalibrationStats(1500).update(conf, correct, mask=mask)
    assert torch.equal(fused._state[0], plain._state[0])  # counts per (correct, bin)
    assert torch.allclose(fused._state, plain._state, rtol=1e-7, atol=1e-9)
