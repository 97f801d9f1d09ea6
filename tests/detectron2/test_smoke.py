"""The real detectron2 stack: stock Faster R-CNN FPN trains one step and predicts on CPU."""

import torch
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage

from tests.fixtures import d2_batch, tiny_d2_cfg


def test_faster_rcnn_fpn_train_step_and_inference():
    cfg = tiny_d2_cfg()
    model = build_model(cfg)
    assert type(model.roi_heads).__name__ == "StandardROIHeads"
    optimizer = build_optimizer(cfg, model)
    before = model.roi_heads.box_predictor.cls_score.weight.detach().clone()

    model.train()
    with EventStorage():
        losses = model(d2_batch())
    assert {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    assert not torch.equal(before, model.roi_heads.box_predictor.cls_score.weight)

    model.eval()
    with torch.no_grad():
        outputs = model(d2_batch(num_images=1, seed=1))
    instances = outputs[0]["instances"]
    assert instances.image_size == (64, 64)
    assert instances.pred_boxes.tensor.shape[1] == 4
    assert ((instances.scores >= 0) & (instances.scores <= 1)).all()
