"""The corruption benchmark's image transform: every corruption and severity, deterministic per
image, independent of and harmless to numpy's global random state, and the bad inputs."""

import numpy as np
import pytest
from imagecorruptions import corrupt

from conf_plugins.shift import BENCHMARK, CORRUPTIONS, corrupt_image, parse_corruptions
from conf_plugins.shift.corruptions import HELD_OUT


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", [c for c in CORRUPTIONS if c != "glass_blur"])
def test_every_corruption_changes_the_image_and_grows_with_severity(name, image):
    light = corrupt_image(image, name, 1, key="a.png")
    heavy = corrupt_image(image, name, 5, key="a.png")
    assert light.shape == image.shape and light.dtype == np.uint8
    gap = [np.abs(out.astype(int) - image).mean() for out in (light, heavy)]
    assert gap[1] > 0 and gap[1] >= 0.5 * gap[0], (name, gap)


def test_glass_blur_is_supported(image):
    out = corrupt_image(image[:32, :32], "glass_blur", 1, key="a.png")
    assert out.shape == (32, 32, 3) and np.abs(out.astype(int) - image[:32, :32]).mean() > 0


def test_same_key_same_pixels_and_global_state_untouched(image):
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a = corrupt_image(image, "gaussian_noise", 3, key="img_0001.png")
    assert (np.random.get_state()[1] == before).all()  # the caller's random stream is untouched
    b = corrupt_image(image, "gaussian_noise", 3, key="img_0001.png")
    c = corrupt_image(image, "gaussian_noise", 3, key="img_0002.png")
    assert (a == b).all() and not (a == c).all()
    # the key fixes numpy's seed for the package: equal to seeding it by hand
    assert (corrupt_image(image, "gaussian_noise", 3) == corrupt_image(image, "gaussian_noise", 3)).all()


def test_matches_the_package_with_the_same_seed(image):
    from conf_plugins.shift.corruptions import _seed

    np.random.seed(_seed("k", "shot_noise", 2))
    expected = corrupt(image, corruption_name="shot_noise", severity=2)
    assert (corrupt_image(image, "shot_noise", 2, key="k") == expected).all()


def test_grey_images_become_rgb(image):
    grey = image[:, :, 0]
    out = corrupt_image(grey, "contrast", 2, key="g")
    assert out.shape == (48, 64, 3)
    assert (out == corrupt_image(np.repeat(grey[:, :, None], 3, 2), "contrast", 2, key="g")).all()
    assert corrupt_image(grey[:, :, None], "contrast", 2, key="g").shape == (48, 64, 3)


@pytest.mark.parametrize(
    "name,severity,match",
    [
        ("fogg", 1, "unknown corruption 'fogg'; valid: gaussian_noise"),
        ("fog", 0, "severity must be an integer in 1-5"),
        ("fog", 6, "severity must be an integer in 1-5"),
        ("fog", 2.0, "severity must be an integer in 1-5"),
        ("fog", True, "severity must be an integer in 1-5"),
    ],
)
def test_bad_names_and_severities(image, name, severity, match):
    with pytest.raises(ValueError, match=match):
        corrupt_image(image, name, severity)


def test_bad_images(image):
    with pytest.raises(ValueError, match="too small.*at least 32"):
        corrupt_image(image[:16, :40], "fog", 1)
    with pytest.raises(ValueError, match="uint8"):
        corrupt_image(image.astype(np.float32), "fog", 1)
    with pytest.raises(ValueError, match="H×W×3 RGB or H×W grey"):
        corrupt_image(np.zeros((40, 40, 4), np.uint8), "fog", 1)


def test_parse_corruptions():
    assert parse_corruptions("benchmark") == BENCHMARK and len(parse_corruptions("all")) == 19
    assert parse_corruptions("held_out") == HELD_OUT and not set(HELD_OUT) & set(BENCHMARK)
    assert parse_corruptions("fog, snow,fog") == ("fog", "snow")
    with pytest.raises(ValueError, match="unknown corruption 'rain'"):
        parse_corruptions(["fog", "rain"])


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_corruption_is_a_function_of_its_key(name, image):
    """Including the two that draw from their own generator (impulse noise, glass blur)."""
    small = image[:32, :32]
    assert (corrupt_image(small, name, 4, key="k.png") == corrupt_image(small, name, 4, key="k.png")).all()
