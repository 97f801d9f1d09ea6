"""Greedy one-to-one matching of detections to ground truth, by hand-made cases."""

import pytest
import torch

from conf_plugins.calibration.detection_matching import box_iou, match_detection_batch, match_detections


def test_box_iou_known_values():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[0.0, 0, 10, 10], [5.0, 0, 15, 10], [20.0, 20, 30, 30], [0.0, 0, 0, 0]])
    assert torch.allclose(box_iou(a, b), torch.tensor([[1.0, 1 / 3, 0.0, 0.0]]))


def test_each_gt_matched_once_in_score_order():
    gt = torch.tensor([[0.0, 0, 10, 10]])
    dets = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 9], [1.0, 1, 10, 10]])
    scores = torch.tensor([0.5, 0.9, 0.7])
    correct = match_detections(
        dets, scores, torch.zeros(3, dtype=torch.long), gt, torch.zeros(1, dtype=torch.long), (0.5,)
    )
    # the highest-scoring detection (index 1) takes the GT; the others are duplicates
    assert correct.tolist() == [[False, True, False]]


def test_class_and_threshold_matter():
    gt = torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 30, 30]])
    gt_classes = torch.tensor([0, 1])
    dets = torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 30, 26], [0.0, 0, 10, 10]])
    classes = torch.tensor([1, 1, 0])  # first: right box, wrong class
    correct = match_detections(dets, torch.tensor([0.9, 0.8, 0.7]), classes, gt, gt_classes, (0.5, 0.7))
    assert correct.tolist() == [[False, True, True], [False, False, True]]  # IoU 0.6


def test_no_gt_means_every_detection_is_wrong_and_bad_input_raises():
    dets = torch.tensor([[0.0, 0, 10, 10]])
    correct = match_detections(
        dets,
        torch.tensor([0.9]),
        torch.tensor([0]),
        torch.zeros(0, 4),
        torch.zeros(0, dtype=torch.long),
        (0.5,),
    )
    assert correct.tolist() == [[False]]
    with pytest.raises(ValueError, match="NaN"):
        match_detections(
            dets,
            torch.tensor([float("nan")]),
            torch.tensor([0]),
            torch.zeros(0, 4),
            torch.zeros(0, dtype=torch.long),
        )
    with pytest.raises(ValueError, match="differ in length"):
        match_detections(
            dets,
            torch.tensor([0.9, 0.8]),
            torch.tensor([0]),
            torch.zeros(0, 4),
            torch.zeros(0, dtype=torch.long),
        )


def greedy_reference(det_boxes, det_scores, det_classes, gt_boxes, gt_classes, thresholds):
    """The rule written plainly, one detection at a time (the reference of the vectorised matcher)."""
    correct = torch.zeros(len(thresholds), det_boxes.shape[0], dtype=torch.bool)
    matched_iou = torch.zeros(correct.shape, dtype=torch.float64)
    matched_gt = torch.full(correct.shape, -1, dtype=torch.int64)
    if det_boxes.shape[0] == 0 or gt_boxes.shape[0] == 0:
        return correct, matched_iou, matched_gt
    iou = box_iou(det_boxes.double(), gt_boxes.double())
    iou[det_classes[:, None] != gt_classes[None, :]] = -1.0
    order = torch.argsort(det_scores, descending=True, stable=True).tolist()
    for k, threshold in enumerate(thresholds):
        available = iou.clone()
        for d in order:
            best_iou, g = available[d].max(dim=0)
            if best_iou >= threshold:
                correct[k, d] = True
                matched_iou[k, d] = best_iou
                matched_gt[k, d] = g
                available[:, g] = -1.0
    return correct, matched_iou, matched_gt


def random_image(g, num_det, num_gt, num_classes=3):
    """Boxes on a coarse integer grid, so IoU ties and duplicate scores occur."""

    def boxes(n):
        xy = torch.randint(0, 6, (n, 2), generator=g).double()
        return torch.cat([xy, xy + torch.randint(1, 5, (n, 2), generator=g)], dim=1)

    gt = boxes(num_gt)
    near = gt[torch.randint(0, max(num_gt, 1), (num_det,), generator=g)] if num_gt else boxes(num_det)
    dets = torch.where(
        torch.rand(num_det, 1, generator=g) < 0.6,
        near + torch.randint(-1, 2, (num_det, 4), generator=g),
        boxes(num_det),
    )
    return dict(
        det_boxes=dets,
        det_scores=torch.randint(0, 5, (num_det,), generator=g) / 5.0,
        det_classes=torch.randint(0, num_classes, (num_det,), generator=g),
        gt_boxes=gt,
        gt_classes=torch.randint(0, num_classes, (num_gt,), generator=g),
    )


def test_batch_matching_equals_the_per_detection_rule_on_random_images():
    g = torch.Generator().manual_seed(0)
    thresholds = (0.3, 0.5, 0.7, 1.0)
    for trial in range(40):
        images = [
            random_image(
                g, int(torch.randint(0, 30, (1,), generator=g)), int(torch.randint(0, 8, (1,), generator=g))
            )
            for _ in range(7)
        ]
        matched = match_detection_batch(images, thresholds, return_gt_index=True)
        for im, (correct, ignored, iou, gt_index) in zip(images, matched):
            expected, expected_iou, expected_gt = greedy_reference(
                im["det_boxes"],
                im["det_scores"],
                im["det_classes"],
                im["gt_boxes"],
                im["gt_classes"],
                thresholds,
            )
            assert torch.equal(correct, expected), trial
            assert torch.equal(iou, expected_iou), trial
            assert torch.equal(gt_index, expected_gt), trial
            assert not ignored.any()  # no crowd regions given


def test_crowd_regions_absorb_unmatched_detections_as_coco_does():
    gt = torch.tensor([[0.0, 0, 10, 10]])
    crowd = torch.tensor([[20.0, 0, 60, 40]])
    dets = torch.tensor(
        [
            [0.0, 0, 10, 10],  # matches the GT
            [0.0, 0, 10, 10],  # duplicate of it: wrong (no crowd overlap)
            [25.0, 5, 35, 15],  # inside the crowd region: ignored
            [30.0, 5, 40, 15],  # a second one: crowd regions absorb any number
            [50.0, 30, 70, 50],  # a quarter inside: ignored at 0.25, wrong above
            [25.0, 5, 35, 15],
        ]
    )  # inside, but another class: wrong
    classes = torch.tensor([0, 0, 0, 0, 0, 1])
    ((correct, ignored, _),) = match_detection_batch(
        [
            dict(
                det_boxes=dets,
                det_scores=torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]),
                det_classes=classes,
                gt_boxes=gt,
                gt_classes=torch.tensor([0]),
                crowd_boxes=crowd,
                crowd_classes=torch.tensor([0]),
            )
        ],
        (0.25, 0.5),
    )
    assert correct.tolist() == [[True, False, False, False, False, False]] * 2
    assert ignored.tolist() == [
        [False, False, True, True, True, False],
        [False, False, True, True, False, False],
    ]


def test_matching_and_crowd_handling_agree_with_pycocotools_cocoeval():
    """COCOeval's own matches (dtMatches) and crowd-ignored detections (dtIgnore) on random
    images with crowd regions; continuous boxes, since COCOeval breaks IoU ties differently."""
    import contextlib
    import io

    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    g = torch.Generator().manual_seed(1)
    thresholds = (0.3, 0.5, 0.7)
    images, gt_anns, dt_anns = [], [], []
    xywh = lambda b: [b[0], b[1], b[2] - b[0], b[3] - b[1]]  # noqa: E731
    for image_id in range(1, 16):
        corners = torch.rand(14, 2, generator=g).double() * 50
        boxes = torch.cat([corners, corners + 5 + 20 * torch.rand(14, 2, generator=g).double()], 1)
        gt, crowd, dets = boxes[:4], boxes[4:6], boxes[6:]
        dets = torch.cat(
            [
                dets,
                gt[:3] + torch.rand(3, 4, generator=g).double() * 4,
                crowd[:1] + 2 + torch.rand(1, 4, generator=g).double(),
            ]
        )
        im = dict(
            det_boxes=dets,
            det_scores=torch.rand(len(dets), generator=g).double(),
            det_classes=torch.randint(1, 3, (len(dets),), generator=g),
            gt_boxes=gt,
            gt_classes=torch.randint(1, 3, (4,), generator=g),
            crowd_boxes=crowd,
            crowd_classes=torch.randint(1, 3, (2,), generator=g),
        )
        images.append(im)
        for boxes_, classes, is_crowd in ((gt, im["gt_classes"], 0), (crowd, im["crowd_classes"], 1)):
            for b, c in zip(boxes_.tolist(), classes.tolist()):
                w, h = b[2] - b[0], b[3] - b[1]
                gt_anns.append(
                    dict(
                        id=len(gt_anns) + 1,
                        image_id=image_id,
                        category_id=c,
                        bbox=xywh(b),
                        area=w * h,
                        iscrowd=is_crowd,
                    )
                )
        for b, s, c in zip(dets.tolist(), im["det_scores"].tolist(), im["det_classes"].tolist()):
            dt_anns.append(dict(image_id=image_id, category_id=c, bbox=xywh(b), score=s))
    coco = COCO()
    coco.dataset = dict(
        images=[dict(id=i) for i in range(1, 16)], annotations=gt_anns, categories=[dict(id=1), dict(id=2)]
    )
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        evaluation = COCOeval(coco, coco.loadRes(dt_anns), "bbox")
        evaluation.params.iouThrs = np.array(thresholds)
        evaluation.params.areaRng, evaluation.params.areaRngLbl = [[0, 1e10]], ["all"]
        evaluation.params.maxDets = [100]
        evaluation.evaluate()
    coco_correct, coco_ignored = {}, {}
    for result in evaluation.evalImgs:
        if result is None:
            continue
        for k, det_id in enumerate(result["dtIds"]):
            coco_correct[det_id] = [
                bool(m) and not i for m, i in zip(result["dtMatches"][:, k], result["dtIgnore"][:, k])
            ]
            coco_ignored[det_id] = result["dtIgnore"][:, k].astype(bool).tolist()
    det_id = 0
    for im, (correct, ignored, _) in zip(images, match_detection_batch(images, thresholds)):
        for d in range(correct.shape[1]):
            det_id += 1  # loadRes numbers detections 1.. in the order given
            assert correct[:, d].tolist() == coco_correct[det_id], det_id
            assert ignored[:, d].tolist() == coco_ignored[det_id], det_id
    assert sum(any(v) for v in coco_ignored.values()) >= 3  # the crowd rule was exercised


def test_mask_iou_of_box_shaped_masks_is_the_box_iou_and_matches_alike():
    from conf_plugins.calibration.detection_matching import mask_iou

    g = torch.Generator().manual_seed(4)
    corners = torch.randint(0, 40, (14, 2), generator=g)
    sizes = torch.randint(1, 24, (14, 2), generator=g)
    boxes = torch.cat([corners, corners + sizes], 1).double()
    masks = torch.zeros(14, 64, 64, dtype=torch.bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes.long().tolist()):
        m[y0:y1, x0:x1] = True  # pixel-exact rectangles: the same areas as the boxes
    det, gt = slice(0, 8), slice(8, 14)
    assert torch.allclose(mask_iou(masks[det], masks[gt]), box_iou(boxes[det], boxes[gt]), atol=1e-12)
    image = dict(
        det_boxes=boxes[det],
        det_scores=torch.rand(8, generator=g),
        det_classes=torch.randint(0, 2, (8,), generator=g),
        gt_boxes=boxes[gt],
        gt_classes=torch.randint(0, 2, (6,), generator=g),
    )
    by_boxes = match_detection_batch([image], (0.1, 0.3), return_gt_index=True)[0]
    by_masks = match_detection_batch(
        [{**image, "overlap": mask_iou(masks[det], masks[gt])}], (0.1, 0.3), True
    )[0]
    for a, b in zip(by_boxes, by_masks):
        assert torch.allclose(a.double(), b.double())
    assert mask_iou(masks[:0], masks[gt]).shape == (0, 6) and mask_iou(masks[det], masks[:0]).shape == (8, 0)
    with pytest.raises(ValueError, match="differ in size"):
        mask_iou(masks[:2], masks[:2, :32])
