"""ConfidenceSegVisualizer on real mmseg predictions: the four panels, what each shows, and
its use by the stock SegVisualizationHook through tools/seg_test.py --show-dir."""

import numpy as np
import pytest
import torch
from mmseg.registry import MODELS, VISUALIZERS

import conf_plugins.mmseg  # noqa: F401  (registers our components)
from conf_plugins.mmseg.visualization import (
    ERROR_RGB,
    HEADER,
    IGNORED_RGB,
    ConfidenceSegVisualizer,
    confidence_map,
)
from tests.fixtures import mmseg_batch, tiny_mmseg_model_cfg
from tests.mmseg.test_success_head import success_model_cfg

_count = iter(range(10_000))


def visualizer(**kwargs):
    return VISUALIZERS.build(dict(type="ConfidenceSegVisualizer", name=f"t{next(_count)}", **kwargs))


def predicted(model):
    with torch.no_grad():
        return model.test_step(mmseg_batch(num_images=1, size=64))[0]


def test_four_panels_show_image_prediction_errors_and_confidence(tmp_path):
    sample = predicted(MODELS.build(success_model_cfg()).eval())
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    vis = visualizer()
    drawn = vis.add_datasample("x", image, sample, out_file=str(tmp_path / "x.png"))
    assert drawn.shape == (64 + HEADER, 4 * 64, 3) and (tmp_path / "x.png").stat().st_size > 0
    assert np.array_equal(drawn[HEADER:, :64], image)
    pred = sample.pred_sem_seg.data[0].numpy()
    label = sample.gt_sem_seg.data[0].numpy()
    errors = drawn[HEADER:, 128:192]
    wrong = (pred != label) & (label != 255)
    assert (errors[wrong] == ERROR_RGB).all() and (errors[label == 255] == IGNORED_RGB).all()
    name, conf = confidence_map(sample)  # auto: no Bayes binning fitted -> success score
    assert name == "success_score"
    assert np.allclose(conf, sample.success_score.data[0].numpy())


def test_without_ground_truth_three_panels_and_max_softmax():
    sample = predicted(MODELS.build(tiny_mmseg_model_cfg()).eval())
    del sample.gt_sem_seg
    drawn = visualizer(confidence="max_softmax").panels(np.zeros((64, 64, 3), np.uint8), sample)
    assert drawn.shape == (64 + HEADER, 3 * 64, 3)
    with pytest.raises(KeyError, match="no 'pred_confidence' map"):
        visualizer(confidence="pred_confidence").panels(np.zeros((64, 64, 3), np.uint8), sample)


def test_is_a_registered_seg_visualizer():
    assert VISUALIZERS.get("ConfidenceSegVisualizer") is ConfidenceSegVisualizer
