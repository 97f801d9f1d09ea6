"""Percentile bootstrap over images against a plain resampling loop (merge the drawn images'
statistics, compute, take percentiles), paired differences, verdicts and bad input."""

import math

import numpy as np
import pytest
import torch

from conf_plugins.calibration import CalibrationStats, bootstrap
from conf_plugins.calibration.bootstrap import (
    bootstrap_intervals,
    paired_bootstrap,
    percentile_interval,
    resample_counts,
    verdict,
)
from conf_plugins.calibration.stats import StatsRecordMetrics, metrics_of_records

NAMES = ("ECE", "MSCE", "MCE", "NLL", "Brier", "AUROC", "AUPR_Out", "AURC", "coverage")


def per_image_stats(num_images, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num_images):
        n = int(torch.randint(20, 60, (1,), generator=g))
        conf = torch.rand(n, generator=g)
        correct = torch.rand(n, generator=g) < (conf + shift).clamp(0, 1)
        out.append(CalibrationStats().update(conf, correct))
    return out


def plain_loop(stats, counts, names):
    """Each resample: merge every drawn image's statistics as often as it was drawn."""
    values = {name: [] for name in names}
    for row in counts:
        total = CalibrationStats()
        for image, times in enumerate(row.tolist()):
            for _ in range(int(times)):
                total.merge(stats[image])
        metrics = total.compute()
        for name in names:
            values[name].append(metrics[name])
    return {name: np.array(v) for name, v in values.items()}


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("metric_fn", [metrics_of_records, StatsRecordMetrics()], ids=["whole", "summaries"])
def test_intervals_equal_a_plain_resampling_loop(metric_fn, sparse, monkeypatch):
    """Resampling every column (a plain function) and resampling the two linear summaries of
    StatsRecordMetrics (dense, or CSR when the compact form would not fit) agree with the
    loop."""
    monkeypatch.setattr(bootstrap, "MAX_COMPACT_ENTRIES", 10)  # sparse records: the CSR path
    stats = per_image_stats(12, seed=1)
    records = torch.stack([s.as_record() for s in stats])
    records = records.to_sparse() if sparse else records
    intervals = bootstrap_intervals(records, metric_fn, num_resamples=200, seed=7)
    loop = plain_loop(stats, resample_counts(12, 200, seed=7), NAMES)
    for name in NAMES:
        expected = np.percentile(loop[name], [2.5, 97.5])
        assert intervals[name] == pytest.approx(tuple(expected), rel=1e-9, abs=1e-12), name
    point = sum(stats[1:], stats[0]).compute()
    assert intervals["ECE"][0] <= point["ECE"] <= intervals["ECE"][1]


def test_sparse_records_give_the_dense_result():
    stats = per_image_stats(6, seed=2)
    dense = torch.stack([s.as_record() for s in stats])
    a = bootstrap_intervals(dense, metrics_of_records, num_resamples=250, seed=3)  # 3 chunks
    b = bootstrap_intervals(dense.to_sparse(), metrics_of_records, num_resamples=250, seed=3)
    for name in NAMES:
        assert a[name] == pytest.approx(b[name], rel=1e-12), name


def test_paired_difference_equals_a_plain_loop_and_its_verdict():
    a_stats, b_stats = per_image_stats(10, seed=4), per_image_stats(10, seed=5)
    a = torch.stack([s.as_record() for s in a_stats])
    b = torch.stack([s.as_record() for s in b_stats])
    paired = paired_bootstrap(a, b, metrics_of_records, num_resamples=100, seed=11)
    counts = resample_counts(10, 100, seed=11)
    la, lb = plain_loop(a_stats, counts, ["ECE"]), plain_loop(b_stats, counts, ["ECE"])
    expected = np.percentile(la["ECE"] - lb["ECE"], [2.5, 97.5])
    assert paired["ECE"]["interval"] == pytest.approx(tuple(expected), rel=1e-9)
    total = lambda s: sum(s[1:], s[0]).compute()["ECE"]  # noqa: E731
    assert paired["ECE"]["difference"] == pytest.approx(total(a_stats) - total(b_stats))


def test_verdicts_follow_the_interval():
    same = per_image_stats(15, seed=6)
    records = torch.stack([s.as_record() for s in same])
    paired = paired_bootstrap(records, records, metrics_of_records, num_resamples=100)
    assert paired["ECE"]["verdict"] == "no significant difference"
    # B: every image of A with its confidence pushed away from accuracy -> A is better on ECE
    g = torch.Generator().manual_seed(6)
    good, bad = [], []
    for _ in range(30):
        conf = torch.rand(200, generator=g)
        correct = torch.rand(200, generator=g) < conf
        good.append(CalibrationStats().update(conf, correct).as_record())
        bad.append(CalibrationStats().update(conf.sqrt(), correct).as_record())
    paired = paired_bootstrap(torch.stack(good), torch.stack(bad), metrics_of_records, num_resamples=200)
    assert paired["ECE"]["verdict"] == "A better" and paired["ECE"]["interval"][1] < 0
    paired = paired_bootstrap(torch.stack(bad), torch.stack(good), metrics_of_records, num_resamples=200)
    assert paired["ECE"]["verdict"] == "B better"
    assert verdict("AUROC", (0.01, 0.02)) == "A better" and verdict("ECE@IoU0.5", (0.01, 0.02)) == "B better"
    assert verdict("calib/ECE", (-0.02, -0.01)) == "A better"
    assert verdict("ECE", (math.nan, math.nan)) == "no significant difference"
    assert verdict("coverage", (0.1, 0.2)) == "no direction"
    assert verdict("ECE", (1e-12, 2e-12)) == "no significant difference"  # rounding, not a difference


def test_resamples_are_seeded_and_sum_to_n():
    a, b = resample_counts(7, 20, seed=3), resample_counts(7, 20, seed=3)
    assert torch.equal(a, b) and (a.sum(1) == 7).all()
    assert not torch.equal(a, resample_counts(7, 20, seed=4))


def test_percentile_interval_skips_undefined_resamples():
    assert percentile_interval([1.0, 2.0, math.nan, 3.0]) == pytest.approx(
        tuple(np.percentile([1.0, 2.0, 3.0], [2.5, 97.5]))
    )
    assert all(math.isnan(v) for v in percentile_interval([math.nan, math.nan, 1.0]))


def test_bad_input():
    records = torch.stack([s.as_record() for s in per_image_stats(3, seed=0)])
    with pytest.raises(ValueError, match="at least one image"):
        bootstrap_intervals(records[:0], metrics_of_records)
    with pytest.raises(ValueError, match="num_resamples must be an integer >= 2"):
        bootstrap_intervals(records, metrics_of_records, num_resamples=1)
    with pytest.raises(ValueError, match=r"level must lie in \(0, 1\)"):
        bootstrap_intervals(records, metrics_of_records, level=95)
    with pytest.raises(ValueError, match="same images for both methods: 3 vs 2"):
        paired_bootstrap(records, records[:2], metrics_of_records)
    with pytest.raises(ValueError, match=r"\(images, statistics\) matrix"):
        bootstrap_intervals(records[0], metrics_of_records)


def test_a_metric_that_returns_a_view_of_its_input_is_not_aliased():
    """Sparse records reuse one buffer per chunk: the results must not see later chunks."""
    dense = torch.arange(12, dtype=torch.float64).reshape(6, 2)
    first_column = lambda r: {"c0": r[:, 0]}  # noqa: E731  (a view of the summed records)
    from conf_plugins.calibration.bootstrap import resampled_metrics

    a = resampled_metrics(dense, first_column, 300, seed=1)["c0"]
    b = resampled_metrics(dense.to_sparse(), first_column, 300, seed=1)["c0"]
    assert np.array_equal(a, b)


def test_detection_record_summaries_equal_a_plain_loop():
    """The detection evaluator's metric function resamples four linear summaries of each
    image's record; a loop that merges the drawn images' full statistics agrees."""
    from conf_plugins.calibration.detection_stats import DetectionBinStats, detection_record_metrics

    g = torch.Generator().manual_seed(5)
    num_images, bins, fine = 9, (5, 2, 2), 600
    per_image = []
    for _ in range(num_images):
        n = int(torch.randint(3, 30, (1,), generator=g))
        conf = torch.rand(n, generator=g)
        correct = torch.rand(n, generator=g) < conf
        iou = torch.where(correct, 0.5 + 0.5 * torch.rand(n, generator=g), torch.zeros(n))
        classes = torch.randint(0, 3, (n,), generator=g)
        cx, cy = torch.rand(n, generator=g), torch.rand(n, generator=g)
        per_image.append(
            (
                CalibrationStats(fine).update(conf, correct),
                DetectionBinStats(3, bins).update(conf, correct, classes, iou, (cx, cy)),
            )
        )
    records = torch.stack([torch.cat([s.as_record(), b.state.reshape(-1)]) for s, b in per_image])
    metric_fn = detection_record_metrics(3, bins, 10, fine)
    counts = resample_counts(num_images, 150, seed=2)
    got = bootstrap.resampled_metrics(records.to_sparse(), metric_fn, weights=counts)
    for r, row in enumerate(counts.tolist()):
        stats, bin_stats = CalibrationStats(fine), DetectionBinStats(3, bins)
        for image, times in enumerate(row):
            for _ in range(int(times)):
                stats.merge(per_image[image][0])
                bin_stats.merge(per_image[image][1])
        expected = {
            **stats.compute(),
            "classwise_ECE": bin_stats.classwise_ece(),
            "LaECE": bin_stats.laece(),
            "D-ECE": bin_stats.dece(),
        }
        for name in ("ECE", "MCE", "NLL", "Brier", "AUROC", "AURC", "classwise_ECE", "LaECE", "D-ECE"):
            assert got[name][r] == pytest.approx(expected[name], rel=1e-9, abs=1e-12), (name, r)
