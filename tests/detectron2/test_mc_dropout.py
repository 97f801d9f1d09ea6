"""Dropout box head and MC-dropout inference with the real detectron2."""

import pytest
import torch
from detectron2.modeling import build_model

from tests.fixtures import d2_batch, tiny_d2_cfg


def test_dropout_head_is_state_dict_compatible_with_stock_head():
    torch.manual_seed(0)
    stock = build_model(tiny_d2_cfg())
    dropout = build_model(tiny_d2_cfg(dropout=0.5))
    assert stock.state_dict().keys() == dropout.state_dict().keys()
    dropout.load_state_dict(stock.state_dict())  # strict: stock checkpoints load
    stock.eval()
    dropout.eval()
    batch = d2_batch(num_images=1)
    with torch.no_grad():  # dropout off at test time: the same detections as the stock head
        a, b = stock(batch)[0]["instances"], dropout(batch)[0]["instances"]
    assert torch.equal(a.scores, b.scores)


def test_bad_dropout_rates_are_clear_errors():
    with pytest.raises(ValueError, match="DROPOUT must be in"):
        build_model(tiny_d2_cfg(dropout=1.0))
    cfg = tiny_d2_cfg()
    cfg.MODEL.ROI_HEADS.NAME = "MCDropoutROIHeads"
    model = build_model(cfg).eval()  # stock head without dropout: MC sampling refused
    with pytest.raises(TypeError, match="DropoutFastRCNNConvFCHead"):
        with torch.no_grad():
            model(d2_batch(num_images=1))


def test_mc_inference_averages_explicit_dropout_samples():
    cfg = tiny_d2_cfg(dropout=0.3)
    cfg.MODEL.ROI_HEADS.NAME = "MCDropoutROIHeads"
    cfg.MODEL.MC_DROPOUT.NUM_SAMPLES = 6
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    model = build_model(cfg).eval()
    heads = model.roi_heads
    batch = d2_batch(num_images=1)
    with torch.no_grad():
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        torch.manual_seed(7)
        mc_instances = heads._forward_box(features, proposals)[0]

        torch.manual_seed(7)
        pooled = heads.box_pooler(
            [features[f] for f in heads.box_in_features], [p.proposal_boxes for p in proposals]
        )
        heads.box_head.mc_sampling = True
        samples = [heads.box_predictor(heads.box_head(pooled)) for _ in range(6)]
        heads.box_head.mc_sampling = False
        probs = torch.stack([s[0].softmax(-1) for s in samples]).mean(0)
        deltas = torch.stack([s[1] for s in samples]).mean(0)
        explicit = heads.box_predictor.inference((probs.log(), deltas), proposals)[0][0]
        single_pass = heads.box_predictor(heads.box_head(pooled))[0].softmax(-1)
    assert len(mc_instances) > 0
    assert torch.allclose(mc_instances.scores, explicit.scores, atol=1e-5)
    assert torch.allclose(mc_instances.pred_boxes.tensor, explicit.pred_boxes.tensor, atol=1e-4)
    assert not torch.allclose(probs, single_pass, atol=1e-3)  # MC-M is not the baseline
