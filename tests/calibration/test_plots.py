"""The plots write non-empty PNG files."""

import numpy as np
import pytest
import torch

from conf_plugins.calibration import (
    CalibrationStats,
    plot_confidence_heatmap,
    plot_reliability,
    plot_risk_coverage,
)

from ._data import quantised_sample

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    with open(path, "rb") as f:
        data = f.read()
    return data.startswith(PNG_MAGIC) and len(data) > 2000


def test_reliability_and_risk_coverage(tmp_path):
    conf, correct = quantised_sample(500, seed=30)
    stats = CalibrationStats().update(conf, correct)
    other = CalibrationStats().update(conf**2, correct)
    assert _is_png(plot_reliability(stats, tmp_path / "rel.png", num_bins=10, title="demo"))
    assert _is_png(plot_reliability(stats.reliability(15), tmp_path / "sub" / "rel_dict.png"))
    path = plot_risk_coverage({"raw": stats, "squared": other}, tmp_path / "rc.png")
    assert _is_png(path)
    with pytest.raises(ValueError, match="no samples"):
        plot_reliability(CalibrationStats(), tmp_path / "empty.png")


def test_confidence_heatmap(tmp_path):
    conf = torch.rand(24, 32)
    image = (np.random.default_rng(0).random((24, 32, 3)) * 255).astype(np.uint8)
    mask = np.ones((24, 32), dtype=bool)
    mask[:4] = False
    assert _is_png(plot_confidence_heatmap(image, conf, tmp_path / "h.png", title="t", mask=mask))
    assert _is_png(plot_confidence_heatmap(None, conf.numpy(), tmp_path / "h1.png"))
    with pytest.raises(ValueError, match="uint8"):
        plot_confidence_heatmap(image[:10], conf, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="HxW"):
        plot_confidence_heatmap(None, conf[None], tmp_path / "bad.png")
