"""GradientMetricsROIHeads with the real detectron2: per-detection closed-form gradient metrics
equal autograd on the box predictor's classifier (gradient paper §2)."""

import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import conf_plugins.detectron2.gradient_roi_heads  # noqa: F401  (registers the head)
from conf_plugins.calibration.entropy import normalized_entropy
from conf_plugins.detectron2.gradient_roi_heads import GRADIENT_FIELDS
from tests.fixtures import d2_batch, tiny_d2_cfg


def gradient_cfg(score_thresh=0.0):
    cfg = tiny_d2_cfg()
    cfg.MODEL.ROI_HEADS.NAME = "GradientMetricsROIHeads"
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_thresh
    return cfg


def explicit_gradient(cls_score, h):
    """Flattened [∇W, ∇b] of −log p_ŷ for one proposal, ŷ = argmax over all K + 1 classes."""
    with torch.enable_grad():
        z = F.linear(h, cls_score.weight, cls_score.bias)
        loss = -z.log_softmax(0)[z.argmax()]
        g_w, g_b = torch.autograd.grad(loss, (cls_score.weight, cls_score.bias))
    return torch.cat([g_w.flatten(), g_b]), z.detach()


def model_features_proposals():
    """A tiny GradientMetricsROIHeads model in eval mode, its input batch, features and
    RPN proposals."""
    torch.manual_seed(0)
    model = build_model(gradient_cfg()).eval()
    batch = d2_batch(num_images=2)
    with torch.no_grad():
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
    return model, model.roi_heads, batch, features, proposals


def test_each_detection_carries_the_autograd_metrics_of_its_proposal():
    model, heads, batch, features, proposals = model_features_proposals()
    with torch.no_grad():
        instances = heads._forward_box(features, proposals)
        # the stock path, explicitly: which proposal row produced each detection
        pooled = heads.box_pooler(
            [features[f] for f in heads.box_in_features], [p.proposal_boxes for p in proposals]
        )
        hidden = heads.box_head(pooled)
        stock, kept = heads.box_predictor.inference(heads.box_predictor(hidden), proposals)
        full = model(batch)  # the fields survive detector_postprocess
    offsets = [0, len(proposals[0])]
    mismatched_class = 0
    for inst, ref, kept_i, offset, out in zip(instances, stock, kept, offsets, full):
        assert len(inst) > 0
        assert torch.equal(inst.pred_boxes.tensor, ref.pred_boxes.tensor)  # stock detections
        assert torch.equal(inst.scores, ref.scores)
        assert set(GRADIENT_FIELDS.values()) | {"entropy"} <= set(out["instances"].get_fields())
        for j, row in enumerate(kept_i.tolist()):
            g, z = explicit_gradient(heads.box_predictor.cls_score, hidden[offset + row])
            assert torch.allclose(inst.grad_l2[j], g.norm(), rtol=1e-4, atol=1e-7)
            assert torch.allclose(inst.grad_l1[j], g.abs().sum(), rtol=1e-4, atol=1e-7)
            assert torch.allclose(inst.grad_max[j], g.max(), rtol=1e-4, atol=1e-7)
            assert torch.allclose(inst.grad_min[j], g.min(), rtol=1e-4, atol=1e-7)
            assert torch.allclose(inst.entropy[j], normalized_entropy(z.softmax(0), dim=0), rtol=1e-5)
            mismatched_class += int(inst.pred_classes[j] != z.argmax())
    # SCORE_THRESH_TEST 0: one proposal gives a detection per class, so the detection's
    # class is often not the proposal's predicted class ŷ (the metrics use ŷ)
    assert mismatched_class > 0


def test_training_is_the_stock_roi_heads():
    torch.manual_seed(0)
    stock = build_model(tiny_d2_cfg()).train()
    ours = build_model(gradient_cfg()).train()
    ours.load_state_dict(stock.state_dict())
    batch = d2_batch(num_images=2)
    with EventStorage():
        torch.manual_seed(3)
        stock_losses = stock(batch)
        torch.manual_seed(3)
        our_losses = ours(batch)
    assert stock_losses.keys() == our_losses.keys()
    for key in stock_losses:
        assert torch.equal(stock_losses[key], our_losses[key]), key


def test_no_detections_gives_empty_fields():
    model = build_model(gradient_cfg(score_thresh=1.0)).eval()
    with torch.no_grad():
        out = model(d2_batch(num_images=1))[0]["instances"]
    assert len(out) == 0
    assert out.grad_l2.shape == (0,) and out.entropy.shape == (0,)


def test_detection_rows_skip_proposals_that_inference_drops():
    model, heads, batch, features, proposals = model_features_proposals()
    with torch.no_grad():
        pooled = heads.box_pooler(
            [features[f] for f in heads.box_in_features], [p.proposal_boxes for p in proposals]
        )
        logits, deltas = heads.box_predictor(heads.box_head(pooled))
        deltas[[0, 3, len(proposals[0]) + 1]] = float("inf")  # non-finite boxes: dropped
        instances, kept = heads.box_predictor.inference((logits, deltas), proposals)
        rows = heads._detection_rows((logits, deltas), proposals, kept)
    assert not {0, 3, len(proposals[0]) + 1} & set(rows.tolist())
    classes = torch.cat([x.pred_classes for x in instances])
    scores = torch.cat([x.scores for x in instances])
    assert torch.equal(logits[rows].softmax(1)[torch.arange(len(rows)), classes], scores)
