"""pixel_confidence against the softmax tensor it avoids."""

import pytest
import torch

from conf_plugins.calibration.pixel_confidence import pixel_confidence


@pytest.mark.parametrize("use_kernel", [True, False])  # the fused C++ kernel, the torch path
@pytest.mark.parametrize("temperature", [1.0, 0.75, 2.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_classes", [2, 19, 24, 40])  # 40: the torch.max path
def test_matches_the_softmax_tensor(use_kernel, temperature, dtype, num_classes, monkeypatch):
    import importlib

    module = importlib.import_module("conf_plugins.calibration.pixel_confidence")
    monkeypatch.setattr(module, "TILE_PIXELS", 500)  # several tiles, the last one partial
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(num_classes, 33, 47, generator=g) * 4).to(dtype)
    z[:, 0, 0] = 7.0  # an exact tie of every class: the first maximum wins, as torch.argmax
    z[-1, 0, 1] = z[1:, 0, 1].max()  # a tie of two classes, not the first one
    z[0, 0, 2] = -torch.inf  # a class that cannot be predicted
    probs = (z / temperature).softmax(0)
    conf, pred, margin, ent = pixel_confidence(
        z, temperature, margin=True, entropy=True, use_kernel=use_kernel
    )
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    assert torch.allclose(conf, probs.max(0).values, **tol)
    assert torch.equal(pred, z.argmax(0))
    top2 = z.topk(2, dim=0).values
    assert torch.allclose(margin, (top2[0] - top2[1]) / temperature, **tol)
    assert torch.allclose(ent, -torch.special.xlogy(probs, probs).sum(0), **tol)


def test_the_fused_kernel_is_built_and_a_stale_one_falls_back_with_one_warning(monkeypatch):
    import importlib
    import warnings

    module = importlib.import_module("conf_plugins.calibration.kernel")

    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("the kernel needs AVX2")
    kernel = module.fused_kernel()
    assert kernel is not None, "the environment bootstrap (make env) builds conf_plugins._pixel_kernel"
    z = torch.randn(19, 3000, generator=torch.Generator().manual_seed(1))
    expected = pixel_confidence(z, 1.3, margin=True, entropy=True, use_kernel=False)
    monkeypatch.setattr(kernel, "SOURCE_SHA", "0" * 64)  # built from another source
    monkeypatch.setattr(module, "_kernel_state", {})
    with pytest.warns(UserWarning, match="kernel is stale"):
        got = pixel_confidence(z, 1.3, margin=True, entropy=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning, not one per call
        again = pixel_confidence(z, 1.3, margin=True, entropy=True)
    for a, b, c in zip(got, expected, again):
        assert torch.equal(a, b) and torch.equal(c, b)  # the torch path itself


def test_a_kernel_built_for_wider_vectors_than_the_cpu_has_is_not_used(monkeypatch):
    """setup.py builds for the building CPU (AVX-512 where torch uses it): a checkout moved to
    a CPU without it (or ATEN_CPU_CAPABILITY=avx2) warns once and takes the torch path."""
    import importlib

    module = importlib.import_module("conf_plugins.calibration.kernel")
    kernel = module.fused_kernel()
    if kernel is None:
        pytest.skip("the kernel is not built here (test_the_fused_kernel_is_built... requires it)")
    assert kernel.BUILT_FOR in ("AVX2", "AVX512")
    monkeypatch.setattr(kernel, "BUILT_FOR", "AVX512")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(module, "_kernel_state", {})
    with pytest.warns(UserWarning, match="built for AVX512, which this CPU"):
        assert module.fused_kernel() is None


@pytest.mark.parametrize("use_kernel", [True, False])
def test_bad_inputs(use_kernel):
    from functools import partial

    pixel_confidence_ = partial(pixel_confidence, use_kernel=use_kernel)
    z = torch.zeros(3, 4, 4)
    z[1, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        pixel_confidence_(z)
    z[1, 2, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        pixel_confidence_(z)
    with pytest.raises(ValueError, match="two classes"):
        pixel_confidence_(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        pixel_confidence_(torch.zeros(3, 4, 4), temperature=0.0)


@pytest.mark.parametrize("temperature", [0.1, 0.75, 1.0, 1.33, 10.0])
def test_confident_pixels_are_no_error_and_never_above_one(temperature):
    """A pixel with one dominant class: every other exponential underflows, so the sum is the
    arg-max class's exp(0) alone (the kernel's approximate exp may put it a rounding below 1)."""
    z = torch.zeros(5, 64)
    z[0] = 100.0
    z[2, 32:] = 100.0  # ties with class 0 on half the pixels
    expected = (z / temperature).softmax(0).amax(0)
    for use_kernel in (True, False):
        conf, pred, _, _ = pixel_confidence(z, temperature, use_kernel=use_kernel)
        assert (conf <= 1).all() and torch.allclose(conf, expected, rtol=1e-6) and (pred == 0).all()


@pytest.mark.parametrize("num_classes, num_bins", [(0, 10), (5, 10), (7, 10), (7, 7)])  # 7: not K / n
def test_fused_statistics_equal_pixel_confidence_then_update(num_classes, num_bins, monkeypatch):
    """One pass of the fused kernel (SegCalibrationMetric's max-softmax path) gives the counts of
    pixel_confidence + CalibrationStats.update (its torch path) + DetectionBinStats.update, and
    the sums to float rounding (of the same confidences): ignored pixels, labels outside the
    classes, argmax classes beyond num_classes, confident pixels, a temperature; it counts
    argmax / prediction mismatches."""
    import importlib

    from conf_plugins.calibration import CalibrationStats
    from conf_plugins.calibration.detection_stats import DetectionBinStats
    from conf_plugins.calibration.pixel_confidence import max_softmax_statistics

    kernel_module = importlib.import_module("conf_plugins.calibration.kernel")
    if kernel_module.fused_kernel() is None:
        pytest.skip("the kernel is not built here (test_the_fused_kernel_is_built... requires it)")
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(7, 37, 53, generator=g) * 4
    logits[:, :3] *= 30  # max softmax exactly 1 at T < 1
    label = torch.randint(0, 8, (37, 53), generator=g)  # 7: a label no class predicts
    label[torch.rand(37, 53, generator=g) < 0.2] = 255
    prediction = logits.argmax(0)
    fused, by_class, differ = max_softmax_statistics(
        logits,
        label,
        255,
        1500,
        temperature=0.8,
        num_classes=num_classes,
        num_bins=num_bins,
        prediction=prediction,
    )
    assert differ == 0 and (by_class is None) == (num_classes == 0)

    monkeypatch.setattr(
        importlib.import_module("conf_plugins.calibration.stats"), "fused_kernel", lambda: None
    )
    conf, pred, _, _ = pixel_confidence(logits, 0.8)  # the kernel's values (tested above)
    valid = label != 255
    plain = CalibrationStats(1500).update(conf, pred == label, mask=valid)
    assert torch.equal(fused._state[0], plain._state[0]) and fused.count == int(valid.sum())
    assert torch.allclose(fused._state, plain._state, rtol=1e-6, atol=1e-6)
    if num_classes:
        kept = valid & (pred < num_classes)
        expected = DetectionBinStats(num_classes, (num_bins,)).update(
            conf[kept], (pred == label)[kept], pred[kept]
        )
        assert torch.equal(by_class.state[0], expected.state[0])
        assert torch.allclose(by_class.state, expected.state, rtol=1e-6, atol=1e-6)

    flipped = prediction.clone()
    flipped[0, :4] = (flipped[0, :4] + 1) % 7
    assert max_softmax_statistics(logits, label, 255, 1500, prediction=flipped)[2] == 4
    with pytest.raises(ValueError, match="logits contain NaN"):
        bad = logits.clone()
        bad[2, 5, 5] = float("nan")
        max_softmax_statistics(bad, label, 255, 1500)
    with pytest.raises(ValueError, match="label"):
        max_softmax_statistics(logits, label[:, :-1], 255, 1500)
