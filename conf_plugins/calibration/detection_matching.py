"""Which detections are correct: greedy one-to-one matching against ground truth.

Framework-free (torch only), shared by the detectron2 evaluator and tests. A detection is
correct at IoU threshold t when, taking detections in descending score order, it overlaps
a not-yet-matched ground-truth box of the same class with IoU >= t; each GT box is matched
at most once, to the best-overlapping eligible detection in score order (the protocol of
the DDN paper's Fig. 4 and of COCO, without COCO's crowd handling: crowd boxes are left out
of the GT by the caller, so detections on them count as wrong).
"""
import torch


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU matrix (N, M) of XYXY boxes; empty or degenerate boxes give IoU 0."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]).clamp(min=0) * (boxes1[:, 3] - boxes1[:, 1]).clamp(min=0)
    area2 = (boxes2[:, 2] - boxes2[:, 0]).clamp(min=0) * (boxes2[:, 3] - boxes2[:, 1]).clamp(min=0)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    union = area1[:, None] + area2[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def match_detections(det_boxes, det_scores, det_classes, gt_boxes, gt_classes,
                     iou_thresholds=(0.5,)) -> torch.Tensor:
    """Correctness (len(iou_thresholds), D) bool of each detection at each IoU threshold."""
    num_det = det_boxes.shape[0]
    if not (det_scores.shape[0] == det_classes.shape[0] == num_det
            and gt_boxes.shape[0] == gt_classes.shape[0]):
        raise ValueError("detections / ground truth: boxes, scores and classes differ in length")
    if not torch.isfinite(det_scores).all() or not torch.isfinite(det_boxes).all():
        raise ValueError("detections contain NaN or inf scores or boxes")
    correct = torch.zeros(len(iou_thresholds), num_det, dtype=torch.bool)
    if num_det == 0 or gt_boxes.shape[0] == 0:
        return correct
    iou = box_iou(det_boxes.double(), gt_boxes.double())
    iou[det_classes[:, None] != gt_classes[None, :]] = -1.0
    order = torch.argsort(det_scores, descending=True, stable=True).tolist()
    for k, threshold in enumerate(iou_thresholds):
        available = iou.clone()
        for d in order:
            best_iou, g = available[d].max(dim=0)
            if best_iou >= threshold:
                correct[k, d] = True
                available[:, g] = -1.0
    return correct
