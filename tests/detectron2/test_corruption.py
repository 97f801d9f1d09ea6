"""INPUT.CORRUPTION in detectron2's real test loader: the image is corrupted at its original
resolution before the stock resize, boxes and image ids are unchanged, every pass gives the
same pixels, and bad keys are clear errors."""

import pytest
import torch

from conf_plugins.detectron2 import register_demo_detection
from conf_plugins.detectron2.engine import CalibrationTrainer
from tests.fixtures import tiny_d2_cfg


@pytest.fixture(scope="module")
def demo_val(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo_det_corrupt"))
    register_demo_detection(root, prefix="corrupt_demo_det", num_images={"train": 1, "val": 3}, image_size=64)
    return "corrupt_demo_det_val"


def batches(cfg, dataset):
    return [b for batch in CalibrationTrainer.build_test_loader(cfg, dataset) for b in batch]


def test_corruption_changes_pixels_only_and_is_deterministic(demo_val):
    cfg = tiny_d2_cfg()
    clean = batches(cfg, demo_val)
    cfg.INPUT.CORRUPTION.NAME, cfg.INPUT.CORRUPTION.SEVERITY = "gaussian_noise", 5
    noisy, again = batches(cfg, demo_val), batches(cfg, demo_val)
    assert [b["image_id"] for b in noisy] == [b["image_id"] for b in clean]
    for c, n, a in zip(clean, noisy, again):
        assert n["image"].shape == c["image"].shape  # the stock resize still follows
        assert (n["image"].float() - c["image"].float()).abs().mean() > 10
        assert torch.equal(n["image"], a["image"])
    cfg.INPUT.CORRUPTION.SEVERITY = 1
    light = batches(cfg, demo_val)
    for c, n, lt in zip(clean, noisy, light):
        heavy_gap = (n["image"].float() - c["image"].float()).abs().mean()
        assert 0 < (lt["image"].float() - c["image"].float()).abs().mean() < heavy_gap


def test_bgr_images_are_corrupted_as_rgb(demo_val):
    """A colour corruption must see RGB: the BGR loader flips before and after."""
    cfg = tiny_d2_cfg()
    cfg.INPUT.CORRUPTION.NAME, cfg.INPUT.CORRUPTION.SEVERITY = "saturate", 5
    bgr = batches(cfg, demo_val)
    cfg.INPUT.FORMAT = "RGB"
    rgb = batches(cfg, demo_val)
    for b, r in zip(bgr, rgb):
        assert torch.equal(b["image"].flip(0), r["image"])


@pytest.mark.parametrize(
    "name,severity,match",
    [
        ("rain", 3, "INPUT.CORRUPTION: unknown corruption 'rain'; valid: gaussian_noise"),
        ("fog", 7, "INPUT.CORRUPTION: corruption severity must be an integer in 1-5"),
    ],
)
def test_bad_corruption_keys(demo_val, name, severity, match):
    cfg = tiny_d2_cfg()
    cfg.INPUT.CORRUPTION.NAME, cfg.INPUT.CORRUPTION.SEVERITY = name, severity
    with pytest.raises(ValueError, match=match):
        CalibrationTrainer.build_test_loader(cfg, demo_val)


def test_the_transform_corrupts_the_rgb_image_and_returns_bgr():
    """Exactly: BGR in, the corruption of the RGB image, BGR out (a missing flip fails)."""
    import numpy as np

    from conf_plugins.detectron2.corruption import CorruptionTransform
    from conf_plugins.shift import corrupt_image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    rgb[..., 0] //= 4  # channels of different statistics: an unflipped corruption differs
    out = CorruptionTransform("fog", 3, image_format="BGR").apply_image(np.ascontiguousarray(rgb[:, :, ::-1]))
    assert np.array_equal(out[:, :, ::-1], corrupt_image(rgb, "fog", 3))
    assert np.array_equal(
        CorruptionTransform("fog", 3, image_format="RGB").apply_image(rgb), corrupt_image(rgb, "fog", 3)
    )
