"""Greedy one-to-one matching of detections to ground truth, by hand-made cases."""
import pytest
import torch

from conf_plugins.calibration.detection_matching import box_iou, match_detections


def test_box_iou_known_values():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[0.0, 0, 10, 10], [5.0, 0, 15, 10], [20.0, 20, 30, 30], [0.0, 0, 0, 0]])
    assert torch.allclose(box_iou(a, b), torch.tensor([[1.0, 1 / 3, 0.0, 0.0]]))


def test_each_gt_matched_once_in_score_order():
    gt = torch.tensor([[0.0, 0, 10, 10]])
    dets = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 9], [1.0, 1, 10, 10]])
    scores = torch.tensor([0.5, 0.9, 0.7])
    correct = match_detections(dets, scores, torch.zeros(3, dtype=torch.long), gt,
                               torch.zeros(1, dtype=torch.long), (0.5,))
    # the highest-scoring detection (index 1) takes the GT; the others are duplicates
    assert correct.tolist() == [[False, True, False]]


def test_class_and_threshold_matter():
    gt = torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 30, 30]])
    gt_classes = torch.tensor([0, 1])
    dets = torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 30, 26], [0.0, 0, 10, 10]])
    classes = torch.tensor([1, 1, 0])  # first: right box, wrong class
    correct = match_detections(dets, torch.tensor([0.9, 0.8, 0.7]), classes, gt, gt_classes,
                               (0.5, 0.7))
    assert correct.tolist() == [[False, True, True], [False, False, True]]  # IoU 0.6


def test_no_gt_means_every_detection_is_wrong_and_bad_input_raises():
    dets = torch.tensor([[0.0, 0, 10, 10]])
    correct = match_detections(dets, torch.tensor([0.9]), torch.tensor([0]),
                               torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), (0.5,))
    assert correct.tolist() == [[False]]
    with pytest.raises(ValueError, match="NaN"):
        match_detections(dets, torch.tensor([float("nan")]), torch.tensor([0]),
                         torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="differ in length"):
        match_detections(dets, torch.tensor([0.9, 0.8]), torch.tensor([0]),
                         torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
