"""The bad-input catalogue of the framework-free math: each case asserts its exact outcome, a
clear error naming the bad value and argument, or the documented result."""

import math

import numpy as np
import pytest
import torch

from conf_plugins.calibration import BayesBinningCalibrator, CalibrationStats, TemperatureScaler
from conf_plugins.calibration.stats import METRIC_NAMES


def filled(num_fine_bins=6000, n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    conf = torch.rand(n, generator=g, dtype=torch.float64)
    correct = torch.rand(n, generator=g, dtype=torch.float64) < conf
    return CalibrationStats(num_fine_bins).update(conf, correct), conf, correct


# ------------------------------------------------------------- CalibrationStats inputs
@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.tensor([0.5, math.nan]), "NaN or inf"),
        (torch.tensor([0.5, math.inf]), "NaN or inf"),
        (torch.tensor([0.5, 1.5]), r"\[0, 1\]"),
        (torch.tensor([0.5, -0.1]), r"\[0, 1\]"),
        (torch.tensor([0.5, 0.2], dtype=torch.complex64), "must be real"),
    ],
)
def test_confidence_values_are_checked(bad, message):
    with pytest.raises(ValueError, match=message):
        CalibrationStats().update(bad, torch.tensor([True, False]))


def test_shapes_labels_and_masks_are_checked():
    stats = CalibrationStats()
    with pytest.raises(ValueError, match="shape"):
        stats.update(torch.rand(3), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool or 0/1"):
        stats.update(torch.rand(3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="mask must be a bool"):
        stats.update(torch.rand(3), torch.ones(3, dtype=torch.bool), mask=torch.ones(3))
    with pytest.raises(ValueError, match="mask has shape"):
        stats.update(torch.rand(3), torch.ones(3, dtype=torch.bool), mask=torch.ones(2, dtype=torch.bool))


def test_empty_and_all_masked_inputs_count_nothing_and_compute_refuses():
    stats = CalibrationStats()
    stats.update(torch.empty(0), torch.empty(0, dtype=torch.bool))
    stats.update(
        torch.tensor([math.nan, 2.0]), torch.tensor([True, False]), mask=torch.zeros(2, dtype=torch.bool)
    )  # masked-out values may be anything
    assert stats.count == 0
    with pytest.raises(ValueError, match="no samples"):
        stats.compute()


def test_numpy_scalar_arguments_are_accepted_with_their_python_meaning():
    stats, _, _ = filled()
    reference = stats.compute(num_bins=10, threshold=0.3)
    assert stats.compute(num_bins=np.int64(10), threshold=np.float32(0.3)) == reference
    assert CalibrationStats(np.int32(6000)).num_fine_bins == 6000
    assert BayesBinningCalibrator(np.int64(10)).num_bins == 10


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_bins=7), "num_bins=7 must divide"),
        (dict(num_bins=0), r"num_bins must be an integer in \[1"),
        (dict(num_bins=10.0), "num_bins must be an integer"),
        (dict(num_bins=True), "num_bins must be an integer"),
        (dict(threshold=0.0), r"threshold must be in \(0, 1\]"),
        (dict(threshold=math.nan), r"threshold must be in \(0, 1\]"),
        (dict(threshold=1.5), r"threshold must be in \(0, 1\]"),
        (dict(threshold=0.12345), "fine-bin edge"),
        (dict(threshold="0.5"), "real number"),
    ],
)
def test_bad_metric_arguments_name_the_argument(kwargs, message):
    stats, _, _ = filled()
    with pytest.raises(ValueError, match=message):
        stats.compute(**kwargs)
    with pytest.raises(ValueError, match=message):  # the same rule, checked up front
        stats.check_metric_args(kwargs.get("num_bins", 10), kwargs.get("threshold", 0.5))


def test_threshold_one_calls_nothing_confident():
    stats, _, _ = filled()
    out = stats.compute(threshold=1.0)
    assert out["coverage"] == 0.0 and math.isnan(out["precision"])


def test_compute_returns_exactly_the_documented_metric_names():
    stats, _, _ = filled()
    assert tuple(stats.compute()) == METRIC_NAMES


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("count", -1.0, "negative"),
        ("sum_conf", -0.5, "negative"),
        ("sum_neg_log_conf", -2.0, "negative"),
        ("count", 0.5, "non-integer"),
        ("sum_conf", math.nan, "NaN or inf"),
        ("sum_conf", 1e9, "exceeds its count"),
    ],
)
def test_load_state_dict_refuses_impossible_statistics(key, value, message):
    stats, _, _ = filled()
    state = stats.state_dict()
    state[key] = state[key].clone()
    state[key][1, 3] = value
    with pytest.raises(ValueError, match=message):
        CalibrationStats().load_state_dict(state)


def test_load_state_dict_refuses_negative_entropy_count_and_other_bins():
    stats, _, _ = filled()
    state = stats.state_dict()
    state["entropy_count"] = torch.tensor(-3.0)
    with pytest.raises(ValueError, match="negative"):
        CalibrationStats().load_state_dict(state)
    with pytest.raises(ValueError, match="fine bins"):
        CalibrationStats(600).load_state_dict(stats.state_dict())


def test_merge_of_different_bins_is_refused():
    with pytest.raises(ValueError, match="6000 fine bins into statistics with 600"):
        CalibrationStats(600).merge(CalibrationStats(6000))


# ------------------------------------------------------------- TemperatureScaler
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_temperature_fit_accepts_any_integer_label_dtype(dtype):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(400, 5, generator=g) * 3
    labels = torch.randint(0, 5, (400,), generator=g)
    reference = TemperatureScaler().fit(logits, labels).temperature
    labels = labels.to(dtype)
    labels[:10] = 255 if dtype == torch.uint8 else -1
    ignore = 255 if dtype == torch.uint8 else -1
    fitted = TemperatureScaler().fit(logits, labels, ignore_index=ignore).temperature
    assert fitted == pytest.approx(
        TemperatureScaler().fit(logits[10:], labels[10:].long()).temperature, rel=1e-9
    )
    assert math.isfinite(reference) and fitted > 0


@pytest.mark.parametrize("value", [math.nan, math.inf, math.log(1e3)])
def test_temperature_state_outside_the_fit_range_is_refused(value):
    state = {"log_temperature": torch.tensor(value, dtype=torch.float64)}
    scaler = TemperatureScaler()
    with pytest.raises(ValueError, match="log_temperature must be one finite value"):
        scaler.load_state_dict(state)
    assert scaler.temperature == 1.0  # nothing was loaded


def test_temperature_fit_refuses_bad_logits_and_labels():
    with pytest.raises(ValueError, match="NaN or inf"):
        TemperatureScaler().fit(torch.tensor([[0.0, math.nan]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="labels must be in"):
        TemperatureScaler().fit(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="integer tensor"):
        TemperatureScaler().fit(torch.zeros(2, 3), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="at least one labelled"):
        TemperatureScaler().fit(torch.zeros(2, 3), torch.tensor([255, 255]), ignore_index=255)


# ------------------------------------------------------------- Bayes binning
def test_bayes_binning_refuses_prediction_before_fit_and_bad_states():
    with pytest.raises(RuntimeError, match="no counts"):
        BayesBinningCalibrator(10).predict(torch.rand(3))
    fitted = BayesBinningCalibrator(10).fit(torch.rand(50), torch.rand(50) > 0.3)
    state = fitted.state_dict()
    state["failure_counts"] = -state["failure_counts"]
    with pytest.raises(ValueError, match="non-negative integer"):
        BayesBinningCalibrator(10).load_state_dict(state)
    with pytest.raises(ValueError, match="has 10 bins, this calibrator has 20"):
        BayesBinningCalibrator(20).load_state_dict(fitted.state_dict())
