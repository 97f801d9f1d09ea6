"""Selective Scaling and local temperature scaling on synthetic pixels whose miscalibration
one global temperature cannot fix."""

import pytest
import torch
import torch.nn.functional as F

from conf_plugins.calibration import TemperatureScaler
from conf_plugins.calibration.pixel_calibrators import (
    LocalTemperatureScaling,
    SelectiveScaling,
    build_pixel_calibrator,
)
from conf_plugins.calibration.sampling import UniformItemSample


def two_populations(n=40_000, classes=5, seed=0):
    """Easy pixels: right and moderately confident; hard ones: right half the time but as
    confident as the easy ones (the case Selective Scaling targets)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    logits = torch.randn(n, classes, generator=g)
    hard = torch.rand(n, generator=g) < 0.3
    shown = torch.where(hard & (torch.rand(n, generator=g) < 0.5), (labels + 1) % classes, labels)
    logits += torch.where(hard, 6.0, 4.0)[:, None] * F.one_hot(shown, classes)
    return logits, labels, hard


def test_selective_scaling_beats_one_temperature_and_keeps_the_prediction():
    logits, labels, _ = two_populations()
    fit_logits, fit_labels, test_logits, test_labels = logits[::2], labels[::2], logits[1::2], labels[1::2]
    scaling = SelectiveScaling()
    summary = scaling.fit(fit_logits, fit_labels)
    assert summary["temperature_wrong"] > summary["temperature_right"]
    assert 0 < summary["share_predicted_wrong"] < 1
    temperature = TemperatureScaler().fit(fit_logits, fit_labels).temperature
    nll_ts = F.cross_entropy(test_logits / temperature, test_labels)
    nll_ss = F.cross_entropy(scaling(test_logits), test_labels)
    assert nll_ss < nll_ts - 0.01  # held-out pixels
    assert torch.equal(scaling(test_logits).argmax(1), test_logits.argmax(1))
    # (C, H, W) maps, classes on dim 0, give the same as (N, C) rows
    image = test_logits[:64].T.reshape(5, 8, 8)
    assert torch.allclose(scaling(image, dim=0).reshape(5, -1).T, scaling(test_logits[:64]))


def test_selective_scaling_with_a_given_selector():
    logits, labels, hard = two_populations()
    right = (~hard).double() * 0.9 + 0.05  # an oracle success branch
    summary = SelectiveScaling().fit(logits, labels, right_probability=right)
    assert (
        summary["selector"] == "given" and abs(summary["share_predicted_wrong"] - hard.double().mean()) < 1e-9
    )


def test_local_temperature_scaling_learns_a_spatial_temperature():
    """Left half of each image: overconfident logits; right half: underconfident. One global
    temperature cannot fit both; a local one can (held-out images)."""
    g = torch.Generator().manual_seed(1)

    def image():
        labels = torch.randint(0, 4, (16, 16), generator=g)
        flip = torch.rand(16, 16, generator=g) < 0.25
        shown = torch.where(flip, (labels + 1) % 4, labels)
        scale = torch.ones(16, 16)
        scale[:, :8] = 8.0
        scale[:, 8:] = 0.5
        logits = F.one_hot(shown, 4).permute(2, 0, 1).float() * scale + 0.1 * torch.randn(
            4, 16, 16, generator=g
        )
        return logits, labels

    train, test = [image() for _ in range(6)], [image() for _ in range(4)]
    lts = LocalTemperatureScaling(4)
    summary = lts.fit(train, iters=150, lr=0.05)
    assert summary["nll"] < summary["nll_start"]
    z = torch.stack([x for x, _ in test])
    y = torch.stack([t for _, t in test])
    nll_ts = F.cross_entropy(z / summary["global_temperature"], y)
    nll_lts = F.cross_entropy(lts(z), y)
    assert nll_lts < nll_ts - 0.05
    assert torch.equal(lts(z).argmax(1), z.argmax(1))
    t = lts.temperature_map(z)
    assert t[..., :, :6].mean() > t[..., :, 10:].mean()  # overconfident side gets the larger T
    assert not any(p.requires_grad for p in lts.parameters())  # never trained by the segmentor


def test_local_temperature_scaling_reads_the_image():
    """The same logits everywhere, but in the half of each image that the image marks the
    prediction is wrong 40 % of the time, 5 % in the other half: only a net that reads the
    image can tell them apart (held-out images)."""
    g = torch.Generator().manual_seed(2)

    def image():
        labels = torch.randint(0, 4, (16, 16), generator=g)
        marked = torch.zeros(16, 16, dtype=torch.bool)
        marked[:, 8:] = True  # one half of the image, which half drawn per image
        marked = marked.flip(1) if torch.rand(1, generator=g) < 0.5 else marked
        flip = torch.rand(16, 16, generator=g) < torch.where(marked, 0.4, 0.05)
        logits = 4.0 * F.one_hot(torch.where(flip, (labels + 1) % 4, labels), 4).permute(2, 0, 1).float()
        picture = marked.float()[None].expand(3, -1, -1) + 0.05 * torch.randn(3, 16, 16, generator=g)
        return logits, labels, picture

    train, test = [image() for _ in range(12)], [image() for _ in range(4)]
    z, y, pictures = (torch.stack(parts) for parts in zip(*test))
    blind, seeing = LocalTemperatureScaling(4), LocalTemperatureScaling(4, image_channels=3)
    blind.fit([(z_, y_) for z_, y_, _ in train], iters=300, lr=0.02)
    seeing.fit(train, iters=300, lr=0.02)
    assert F.cross_entropy(seeing(z, pictures), y) < F.cross_entropy(blind(z), y) - 0.05
    assert torch.equal(seeing(z, pictures).argmax(1), z.argmax(1))
    t = seeing.temperature_map(z, pictures)[:, 0]
    marked = pictures[:, 0] > 0.5
    assert t[marked].mean() > t[~marked].mean()
    with pytest.raises(ValueError, match="reads the image"):
        seeing(z)
    with pytest.raises(ValueError, match="reads no image"):
        blind(z, pictures)


def test_image_temperature_softens_the_images_that_look_unlike_the_rest():
    """Clean images: sharp logits, wrong 2 % of the time; corrupted ones: a lower margin
    everywhere, and wrong 45 % of the time (best temperatures about 1.2 and 3). One
    temperature per image from the image's own logits beats one global temperature, and is
    constant within each image (held-out images)."""
    g = torch.Generator().manual_seed(3)

    def image(corrupted):
        labels = torch.randint(0, 4, (16, 16), generator=g)
        flip = torch.rand(16, 16, generator=g) < (0.45 if corrupted else 0.02)
        shown = F.one_hot(torch.where(flip, (labels + 1) % 4, labels), 4).permute(2, 0, 1).float()
        noise = 0.3 * torch.randn(4, 16, 16, generator=g)
        return (4.0 if corrupted else 6.0) * shown + noise, labels

    train = [image(k % 2 == 1) for k in range(12)]
    test = [image(k % 2 == 1) for k in range(6)]
    pooled = build_pixel_calibrator("image_temperature", 4)
    summary = pooled.fit(train)  # the default step and iterations
    z, y = (torch.stack(parts) for parts in zip(*test))
    nll_ts = F.cross_entropy(z / summary["global_temperature"], y)
    assert F.cross_entropy(pooled(z), y) < nll_ts - 0.05
    assert torch.equal(pooled(z).argmax(1), z.argmax(1))
    t = pooled.temperature_map(z)
    assert t.shape == (6, 1, 1, 1) and pooled.temperature_map(z[0]).shape == (1, 1, 1)
    assert t[1::2].min() > t[::2].max()  # the corrupted images get the larger temperature


def test_bad_input_is_refused():
    logits, labels, _ = two_populations(n=100)
    with pytest.raises(RuntimeError, match="not fitted"):
        SelectiveScaling()(logits)
    with pytest.raises(RuntimeError, match="not fitted"):
        LocalTemperatureScaling(5)(torch.zeros(5, 4, 4))
    bad = logits.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        SelectiveScaling().fit(bad, labels)
    with pytest.raises(ValueError, match="labels must be in"):
        SelectiveScaling().fit(logits, labels + 5)
    with pytest.raises(ValueError, match="finite, one value per pixel"):
        SelectiveScaling().fit(logits, labels, right_probability=torch.ones(3))
    with pytest.raises(ValueError, match="no labelled pixels"):
        LocalTemperatureScaling(5).fit([(torch.zeros(5, 4, 4), torch.full((4, 4), 255))])
    with pytest.raises(ValueError, match=r"need logits \(N, 5, H, W\)"):
        LocalTemperatureScaling(5).temperature_map(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="pixel calibrator must be one of"):
        build_pixel_calibrator("platt", 5)


def test_uniform_item_sample_keeps_whole_items_within_the_budget():
    sample = UniformItemSample(budget=10, seed=0)
    for i in range(50):
        sample.add(i, size=3)
    assert len(sample.items) == 3 and sample.seen == 50 and len(set(sample.items)) == 3
    big = UniformItemSample(budget=2).add("only", size=5)
    assert big.items == ["only"]  # the first item always fits
