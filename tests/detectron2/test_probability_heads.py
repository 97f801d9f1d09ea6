"""Per-detection class probabilities and MC-dropout uncertainty, against
explicit loops over proposals and dropout samples on the real detectron2."""

import torch
import torch.nn.functional as F
from detectron2.modeling import build_model

from tests.fixtures import d2_batch, tiny_d2_cfg, tiny_ddn_cfg


def run_box_inference(model, batch, seed=7):
    """(detections, proposals, pooled features, features) of one no-grad box inference."""
    heads = model.roi_heads
    with torch.no_grad():
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        torch.manual_seed(seed)
        instances = heads._forward_box(features, proposals)
        pooled = heads.box_pooler(
            [features[f] for f in heads.box_in_features], [p.proposal_boxes for p in proposals]
        )
    return instances, proposals, pooled


def proposal_of(detection_box, detection_class, score, candidate_boxes, candidate_probs, size=64):
    """Index of the proposal whose class-specific (clipped) box and class probability are the
    detection's: found by search, independently of the inference's bookkeeping."""
    boxes = candidate_boxes.reshape(len(candidate_boxes), -1, 4)[:, detection_class].clamp(0, size)
    distance = (boxes - detection_box).abs().sum(dim=1) + (candidate_probs[:, detection_class] - score).abs()
    assert float(distance.min()) < 1e-4
    return int(distance.argmin())


def test_stock_heads_with_class_probs_match_the_softmax_of_each_detections_proposal():
    cfg = tiny_d2_cfg()
    cfg.MODEL.ROI_HEADS.NAME = "ProbabilityROIHeads"
    cfg.MODEL.ROI_HEADS.OUTPUT_CLASS_PROBS = True
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    batch = d2_batch(num_images=2)
    instances, proposals, pooled = run_box_inference(model, batch)
    heads = model.roi_heads
    with torch.no_grad():
        predictions = heads.box_predictor(heads.box_head(pooled))
        probs = F.softmax(predictions[0], dim=-1).split([len(p) for p in proposals])
        boxes = heads.box_predictor.predict_boxes(predictions, proposals)
    for inst, probs_i, boxes_i in zip(instances, probs, boxes):
        assert len(inst) > 0 and inst.pred_class_probs.shape == (len(inst), 4)
        for d in range(len(inst)):
            c = int(inst.pred_classes[d])
            r = proposal_of(inst.pred_boxes.tensor[d], c, inst.scores[d], boxes_i, probs_i)
            assert torch.allclose(inst.pred_class_probs[d], probs_i[r], atol=1e-6)
            assert torch.isclose(inst.pred_class_probs[d, c], inst.scores[d], atol=1e-6)
    stock = tiny_d2_cfg()  # the same weights in the stock heads: the same detections
    stock.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    plain = build_model(stock).eval()
    plain.load_state_dict(model.state_dict())
    reference, _, _ = run_box_inference(plain, batch)
    assert torch.equal(reference[0].scores, instances[0].scores)
    assert not reference[0].has("pred_class_probs")  # opt-in


def test_mc_dropout_uncertainty_fields_match_an_explicit_sample_loop():
    cfg = tiny_d2_cfg(dropout=0.3)
    cfg.MODEL.ROI_HEADS.NAME = "MCDropoutROIHeads"
    cfg.MODEL.MC_DROPOUT.NUM_SAMPLES = 5
    cfg.MODEL.MC_DROPOUT.OUTPUT_UNCERTAINTY = True
    cfg.MODEL.ROI_HEADS.OUTPUT_CLASS_PROBS = True
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    instances, proposals, pooled = run_box_inference(model, d2_batch(num_images=1), seed=7)
    inst = instances[0]
    heads = model.roi_heads
    with torch.no_grad():
        torch.manual_seed(7)  # the same masks: forward_samples draws them as M forwards would
        heads.box_head.mc_sampling = True
        samples = [heads.box_predictor(heads.box_head(pooled)) for _ in range(5)]
        heads.box_head.mc_sampling = False
    probs = torch.stack([F.softmax(s[0], dim=-1) for s in samples])  # (M, R, K+1)
    mean = probs.mean(0)
    sample_boxes = torch.stack([heads.box_predictor.predict_boxes(s, proposals)[0] for s in samples])
    mean_boxes = heads.box_predictor.predict_boxes(
        (mean.log(), torch.stack([s[1] for s in samples]).mean(0)), proposals
    )[0]
    assert len(inst) > 0
    for d in range(len(inst)):
        c = int(inst.pred_classes[d])
        r = proposal_of(inst.pred_boxes.tensor[d], c, inst.scores[d], mean_boxes, mean)
        p = mean[r]
        h = -sum(float(q) * float(torch.log(q)) for q in p if q > 0)
        expected_h = (
            sum(-sum(float(q) * float(torch.log(q)) for q in probs[m, r] if q > 0) for m in range(5)) / 5
        )
        assert torch.allclose(inst.pred_class_probs[d], p, atol=1e-6)
        assert abs(float(inst.pred_entropy[d]) - h) < 1e-5
        assert abs(float(inst.pred_mutual_info[d]) - (h - expected_h)) < 1e-5
        assert float(inst.pred_mutual_info[d]) >= -1e-6  # Jensen
        boxes_m = sample_boxes[:, r].reshape(5, -1, 4)[:, c]  # (M, 4) this class's box
        std = ((boxes_m - boxes_m.mean(0)) ** 2).mean(0).sqrt()
        assert torch.allclose(inst.pred_box_std[d], std, atol=1e-3), (inst.pred_box_std[d], std)
    assert inst.pred_box_std.shape == (len(inst), 4) and (inst.pred_box_std > 0).any()


def test_ddn_student_outputs_class_probs_on_request(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer

    teacher = build_model(tiny_d2_cfg(dropout=0.3))
    DetectionCheckpointer(teacher, save_dir=str(tmp_path)).save("teacher")
    cfg = tiny_ddn_cfg(str(tmp_path / "teacher.pth"))
    cfg.MODEL.ROI_HEADS.OUTPUT_CLASS_PROBS = True
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(d2_batch(num_images=1))[0]["instances"]
    assert len(out) > 0
    assert torch.allclose(out.pred_class_probs.sum(1), torch.ones(len(out)), atol=1e-5)
    assert torch.allclose(
        out.pred_class_probs.gather(1, out.pred_classes[:, None])[:, 0], out.scores, atol=1e-6
    )
