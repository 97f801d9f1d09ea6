"""Per-pixel gradient-metric maps of mmseg's conv_seg with the real mmseg (gradient paper §2)."""

import pytest
import torch
from mmseg.models.utils import resize
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

from conf_plugins.calibration.entropy import normalized_entropy
from conf_plugins.calibration.gradient_metrics import METRICS, flat_gradient_metrics
from conf_plugins.mmseg.gradient_maps import pixel_gradient_maps, plot_gradient_heatmap
from tests.fixtures import mmseg_batch, tiny_mmseg_model_cfg

register_all_modules()


@pytest.fixture(scope="module")
def model_and_inputs():
    torch.manual_seed(0)
    model = MODELS.build(tiny_mmseg_model_cfg("FCNHead")).eval()
    inputs = model.data_preprocessor(mmseg_batch(), False)["inputs"]
    return model, inputs


def test_maps_have_feature_and_image_resolution_and_are_finite(model_and_inputs):
    model, inputs = model_and_inputs
    maps = pixel_gradient_maps(model, inputs)
    with torch.no_grad():
        logits = model(inputs, mode="tensor")
    n, _, h, w = logits.shape
    assert set(maps["feature"]) == set(maps["image"]) == {*METRICS, "entropy"}
    for name, value in maps["feature"].items():
        assert value.shape == (n, h, w) and torch.isfinite(value).all(), name
        image = maps["image"][name]
        assert image.shape == (n, *inputs.shape[-2:]) and torch.isfinite(image).all(), name
    expected = resize(
        maps["feature"]["l2_norm"][:, None], size=(64, 64), mode="bilinear", align_corners=False
    )[:, 0]
    assert torch.allclose(maps["image"]["l2_norm"], expected)
    assert pixel_gradient_maps(model, inputs, size=(32, 48))["image"]["max"].shape == (n, 32, 48)


@pytest.mark.parametrize("pixel", [(0, 0, 0), (1, 5, 3)])
def test_pixel_metrics_equal_autograd_of_the_pixel_nll(model_and_inputs, pixel):
    model, inputs = model_and_inputs
    maps = pixel_gradient_maps(model, inputs)["feature"]
    conv = model.decode_head.conv_seg
    n, y, x = pixel
    with torch.enable_grad():
        z = model(inputs, mode="tensor")[n, :, y, x]  # eval: no dropout, BN statistics fixed
        loss = -z.log_softmax(0)[z.argmax()]
        g_w, g_b = torch.autograd.grad(loss, (conv.weight, conv.bias))
    explicit = flat_gradient_metrics(torch.cat([g_w.flatten(), g_b])[None].double())
    for name in METRICS:
        assert torch.allclose(maps[name][n, y, x].double(), explicit[name][0], rtol=1e-3, atol=1e-6), name
    entropy = normalized_entropy(z.detach().softmax(0), dim=0)
    assert torch.allclose(maps["entropy"][n, y, x], entropy, rtol=1e-5)


def test_training_mode_and_non_1x1_classifiers_are_refused(model_and_inputs):
    model, inputs = model_and_inputs
    with pytest.raises(ValueError, match="eval"):
        pixel_gradient_maps(model.train(), inputs)
    model.eval()
    conv = model.decode_head.conv_seg
    model.decode_head.conv_seg = torch.nn.Conv2d(conv.in_channels, conv.out_channels, 3)
    try:
        with pytest.raises(TypeError, match="1x1"):
            pixel_gradient_maps(model, inputs)
    finally:
        model.decode_head.conv_seg = conv


def test_heatmap_png(model_and_inputs, tmp_path):
    model, inputs = model_and_inputs
    l2 = pixel_gradient_maps(model, inputs)["image"]["l2_norm"][0]
    image = torch.randint(0, 255, (64, 64, 3), dtype=torch.uint8).numpy()
    path = plot_gradient_heatmap(image, l2, tmp_path / "heat" / "l2.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_success_heads_give_the_maps_of_their_seg_classifier():
    import conf_plugins.mmseg  # noqa: F401  (registers the success heads)

    cfg = tiny_mmseg_model_cfg("FCNHead")
    cfg.type, cfg.decode_head.type = "SuccessEncoderDecoder", "FCNSuccessHead"
    model = MODELS.build(cfg).eval()
    inputs = model.data_preprocessor(mmseg_batch(num_images=1), False)["inputs"]
    maps = pixel_gradient_maps(model, inputs)["feature"]
    with torch.no_grad():
        packed = model(inputs, mode="tensor")  # 4 seg logits, then 2 success logits
    assert packed.shape[1] == 6
    expected = normalized_entropy(packed[:, :4].softmax(1), dim=1)
    assert torch.allclose(maps["entropy"], expected, rtol=1e-5, atol=1e-7)
