"""Which detections are correct: greedy one-to-one matching against ground truth.

Framework-free (torch only), shared by the detectron2 evaluator and tests. A detection is
correct at IoU threshold t when, taking detections in descending score order, it overlaps
a not-yet-matched ground-truth box of the same class with IoU >= t; each GT box is matched
at most once, to the best-overlapping eligible detection in score order (the protocol of
the DDN paper's Fig. 4 and of COCO). Crowd regions (COCO ``iscrowd``) are handled as COCO
does: a detection left unmatched that covers a same-class crowd region (intersection over
the detection's area >= t) is *ignored*, neither right nor wrong; crowd regions can absorb
any number of detections.

Speed: the greedy rule is sequential in score order, but independent across images and
IoU thresholds, so :func:`match_detection_batch` runs it for a batch of images and every
threshold at once: one step per score rank (≤ 100 for detectron2's default) over a
(images × thresholds × GT) tensor, instead of a Python loop over every detection.
"""

import torch


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, over_first: bool = False) -> torch.Tensor:
    """IoU matrix (..., N, M) of XYXY boxes (leading batch dims allowed); empty or degenerate
    boxes give 0. ``over_first``: intersection over the area of ``boxes1`` (COCO's overlap of
    a detection with a crowd region) instead of over the union."""
    area1 = (boxes1[..., 2] - boxes1[..., 0]).clamp(min=0) * (boxes1[..., 3] - boxes1[..., 1]).clamp(min=0)
    area2 = (boxes2[..., 2] - boxes2[..., 0]).clamp(min=0) * (boxes2[..., 3] - boxes2[..., 1]).clamp(min=0)
    top_left = torch.max(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    bottom_right = torch.min(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    if over_first:
        union = area1[..., :, None].expand_as(inter)
    else:
        union = area1[..., :, None] + area2[..., None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def check_image(det_boxes, det_scores, det_classes, gt_boxes, gt_classes):
    """Raise ValueError on lengths that differ or non-finite detections."""
    num_det = det_boxes.shape[0]
    if not (
        det_scores.shape[0] == det_classes.shape[0] == num_det and gt_boxes.shape[0] == gt_classes.shape[0]
    ):
        raise ValueError("detections / ground truth: boxes, scores and classes differ in length")
    if not torch.isfinite(det_scores).all() or not torch.isfinite(det_boxes).all():
        raise ValueError("detections contain NaN or inf scores or boxes")


def _padded(tensors, width, fill, dtype):
    """Stack 1-D / 2-D tensors of different lengths into (B, width, ...) padded with ``fill``."""
    out = torch.full((len(tensors), width, *tensors[0].shape[1:]), fill, dtype=dtype)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
    return out


def mask_iou(det_masks: torch.Tensor, gt_masks: torch.Tensor) -> torch.Tensor:
    """IoU matrix (D, G) float64 of (D, H, W) and (G, H, W) binary masks (0 for two empty ones)."""
    if det_masks.shape[1:] != gt_masks.shape[1:]:
        raise ValueError(
            f"detection masks {tuple(det_masks.shape[1:])} and GT masks "
            f"{tuple(gt_masks.shape[1:])} differ in size"
        )
    det, gt = det_masks.flatten(1).float(), gt_masks.flatten(1).float()  # (0, HW) for no mask too
    inter = (det @ gt.T).double()
    union = det.sum(1).double()[:, None] + gt.sum(1).double()[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def _class_masked_overlap(det_boxes, det_classes, gt_boxes, gt_classes, over_first=False, overlap=None):
    """(B, D, G) overlaps (box IoU, or ``overlap`` given), −1 where the classes differ or
    either side is padding (class −1)."""
    overlap = box_iou(det_boxes, gt_boxes, over_first) if overlap is None else overlap
    same = (det_classes[:, :, None] == gt_classes[:, None, :]) & (gt_classes[:, None, :] >= 0)
    return overlap.masked_fill_(~same, -1.0)


def match_class_agnostic(image, iou_threshold: float) -> tuple:
    """(matched (D,) bool, GT class (D,), -1 when unmatched) of one image's detections
    matched to its GT boxes by IoU whatever their classes (the greedy rule of
    :func:`match_detection_batch`, every class taken as one): what a class-label set is
    judged against."""
    blind = {
        **image,
        "det_classes": torch.zeros_like(image["det_classes"]),
        "gt_classes": torch.zeros_like(image["gt_classes"]),
    }
    if "crowd_classes" in image:
        blind["crowd_classes"] = torch.zeros_like(image["crowd_classes"])
    ((correct, _, _, gt_index),) = match_detection_batch([blind], (iou_threshold,), return_gt_index=True)
    matched = correct[0]
    labels = torch.full_like(gt_index[0], -1)
    labels[matched] = image["gt_classes"].long()[gt_index[0][matched]]
    return matched, labels


def match_detection_batch(images, iou_thresholds=(0.5,), return_gt_index: bool = False):
    """Greedy matching of a batch of images, every IoU threshold in one pass.

    Args:
        images: list of dicts with ``det_boxes`` (D, 4) XYXY, ``det_scores`` (D,),
            ``det_classes`` (D,), ``gt_boxes`` (G, 4), ``gt_classes`` (G,) and optionally
            ``crowd_boxes`` (R, 4) / ``crowd_classes`` (R,), and ``overlap`` (D, G): the
            IoU to match by instead of the boxes' (e.g. :func:`mask_iou`; given for every
            image or none; crowd regions are still judged by box overlap).
        iou_thresholds: IoUs in (0, 1].

    Returns:
        a list with one ``(correct, ignored, iou)`` per image, each (len(iou_thresholds), D):
        ``correct`` / ``ignored`` bool (``ignored``: absorbed by a crowd region, never also
        correct), ``iou`` float64, the IoU with the matched GT box (0 when unmatched); with
        ``return_gt_index`` a fourth, the index of the matched GT box (-1 when unmatched).
    """
    thresholds = torch.tensor([float(t) for t in iou_thresholds], dtype=torch.float64)
    for im in images:
        check_image(im["det_boxes"], im["det_scores"], im["det_classes"], im["gt_boxes"], im["gt_classes"])
    if not images:
        return []
    num_t = len(thresholds)
    sizes = [im["det_scores"].shape[0] for im in images]
    num_det = max(sizes)
    num_gt = max(im["gt_classes"].shape[0] for im in images)
    num_crowd = max(im.get("crowd_classes", torch.zeros(0)).shape[0] for im in images)
    # each image's detections in descending score order (stable: ties keep their order)
    orders = [torch.argsort(im["det_scores"], descending=True, stable=True) for im in images]
    det_boxes = (
        _padded([im["det_boxes"].double()[o] for im, o in zip(images, orders)], num_det, 0.0, torch.float64)
        if num_det
        else None
    )
    det_classes = (
        _padded([im["det_classes"].long()[o] for im, o in zip(images, orders)], num_det, -2, torch.int64)
        if num_det
        else None
    )
    correct = torch.zeros(len(images), num_t, num_det, dtype=torch.bool)
    matched_iou = torch.zeros(len(images), num_t, num_det, dtype=torch.float64)
    matched_gt = torch.full((len(images), num_t, num_det), -1, dtype=torch.int64)
    if num_det and num_gt:
        given = None
        if any("overlap" in im for im in images):
            if not all("overlap" in im for im in images):
                raise ValueError("an overlap matrix is given for some images and not for others")
            given = torch.zeros(len(images), num_det, num_gt, dtype=torch.float64)
            for i, (im, o) in enumerate(zip(images, orders)):
                overlap = im["overlap"].double()
                if overlap.shape != (len(o), im["gt_classes"].shape[0]):
                    raise ValueError(f"overlap must be (detections, GT boxes), got {tuple(overlap.shape)}")
                given[i, : len(o), : overlap.shape[1]] = overlap[o]
        iou = _class_masked_overlap(
            det_boxes,
            det_classes,
            _padded([im["gt_boxes"].double().reshape(-1, 4) for im in images], num_gt, 0.0, torch.float64),
            _padded([im["gt_classes"].long() for im in images], num_gt, -1, torch.int64),
            overlap=given,
        )
        taken = torch.zeros(len(images), num_t, num_gt, dtype=torch.bool)
        for rank in range(num_det):  # the greedy rule, for all images and thresholds at once
            available = iou[:, None, rank, :].masked_fill(taken, -1.0)  # (B, T, G)
            best, gt_index = available.max(dim=2)  # first maximum, as the per-image loop did
            hit = best >= thresholds
            correct[:, :, rank] = hit
            matched_iou[:, :, rank] = best.where(hit, 0.0)
            matched_gt[:, :, rank] = gt_index.where(hit, -1)
            taken.scatter_(
                2, gt_index[..., None], (hit | taken.gather(2, gt_index[..., None])[..., 0])[..., None]
            )
    ignored = torch.zeros_like(correct)
    if num_det and num_crowd:
        crowd = _class_masked_overlap(
            det_boxes,
            det_classes,
            _padded(
                [im.get("crowd_boxes", torch.zeros(0, 4)).double().reshape(-1, 4) for im in images],
                num_crowd,
                0.0,
                torch.float64,
            ),
            _padded(
                [im.get("crowd_classes", torch.zeros(0, dtype=torch.int64)).long() for im in images],
                num_crowd,
                -1,
                torch.int64,
            ),
            over_first=True,
        )
        ignored = (crowd.max(dim=2).values[:, None, :] >= thresholds[None, :, None]) & ~correct
    out = []
    for i, (order, size) in enumerate(zip(orders, sizes)):
        back = torch.empty_like(order)
        back[order] = torch.arange(size)  # from score order back to the input order
        parts = (correct, ignored, matched_iou) + ((matched_gt,) if return_gt_index else ())
        out.append(tuple(part[i, :, :size][:, back] for part in parts))
    return out


def match_detections(
    det_boxes, det_scores, det_classes, gt_boxes, gt_classes, iou_thresholds=(0.5,)
) -> torch.Tensor:
    """Correctness (len(iou_thresholds), D) bool of one image's detections (no crowd)."""
    ((correct, _, _),) = match_detection_batch(
        [
            dict(
                det_boxes=det_boxes,
                det_scores=det_scores,
                det_classes=det_classes,
                gt_boxes=gt_boxes,
                gt_classes=gt_classes,
            )
        ],
        iou_thresholds,
    )
    return correct
