"""DDN student with the real detectron2: frozen parts, hidden teacher, targets, uniform rows."""

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage

from tests.fixtures import d2_batch, tiny_d2_cfg, tiny_ddn_cfg


@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory):
    torch.manual_seed(0)
    teacher = build_model(tiny_d2_cfg(dropout=0.3))
    folder = tmp_path_factory.mktemp("teacher")
    DetectionCheckpointer(teacher, save_dir=str(folder)).save("model_final")
    return str(folder / "model_final.pth")


def build_student(teacher_weights, **kwargs):
    cfg = tiny_ddn_cfg(teacher_weights, **kwargs)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return cfg, model


def test_backbone_and_rpn_frozen_box_head_trains(teacher_weights):
    cfg, model = build_student(teacher_weights)
    optimizer = build_optimizer(cfg, model)
    frozen = {
        k: v.clone()
        for k, v in model.state_dict().items()
        if k.startswith(("backbone.", "proposal_generator."))
    }
    head_before = model.roi_heads.box_head.fc1.weight.detach().clone()
    model.train()
    assert not model.backbone.training and not model.proposal_generator.training
    assert model.roi_heads.training
    with EventStorage():
        losses = model(d2_batch())
    assert {"loss_cls", "loss_box_reg", "loss_distill"} <= set(losses)
    assert not any(k.startswith("loss_rpn") for k in losses)
    sum(losses.values()).backward()
    optimizer.step()
    for name, p in model.named_parameters():
        if name.startswith(("backbone.", "proposal_generator.")):
            assert p.grad is None and not p.requires_grad, name
    for k, v in model.state_dict().items():
        if k in frozen:
            assert torch.equal(v, frozen[k]), k
    assert not torch.equal(head_before, model.roi_heads.box_head.fc1.weight)


def test_teacher_hidden_from_state_dict_and_optimizer(teacher_weights):
    cfg, model = build_student(teacher_weights)
    teacher = model.roi_heads.teacher
    assert not any("teacher" in k for k in model.state_dict())
    optimized = {id(p) for g in build_optimizer(cfg, model).param_groups for p in g["params"]}
    assert all(id(p) not in optimized and not p.requires_grad for p in teacher.parameters())
    assert all(id(p) not in {id(q) for q in model.parameters()} for p in teacher.parameters())
    # the teacher holds the checkpoint's weights, the student starts from the same ones
    assert torch.equal(teacher.box_predictor.cls_score.weight, model.roi_heads.box_predictor.cls_score.weight)
    model.train()
    assert not teacher.training


def test_student_rpn_proposals_equal_teacher_test_proposals(teacher_weights):
    _, student = build_student(teacher_weights)
    teacher_model = build_model(tiny_d2_cfg(dropout=0.3))
    DetectionCheckpointer(teacher_model).load(teacher_weights)
    student.train()
    teacher_model.eval()
    batch = d2_batch()
    proposals = []
    for model in (student, teacher_model):
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        props, _ = model.proposal_generator(images, features, None)
        proposals.append(props)
    for a, b in zip(*proposals):
        assert torch.equal(a.proposal_boxes.tensor, b.proposal_boxes.tensor)


def test_target_is_mean_of_explicit_dropout_samples(teacher_weights):
    _, model = build_student(teacher_weights, num_samples=5)
    heads = model.roi_heads
    teacher = heads.teacher
    features = torch.randn(7, 32, 7, 7)
    torch.manual_seed(123)
    logits, _ = teacher.sample(features, 5)
    torch.manual_seed(123)
    teacher.box_head.mc_sampling = True  # stock-style forward with dropout on, one sample a call
    explicit = torch.stack([teacher.box_predictor(teacher.box_head(features))[0] for _ in range(5)])
    teacher.box_head.mc_sampling = False
    assert torch.allclose(logits, explicit, atol=1e-5)
    assert not torch.allclose(explicit[0], explicit[1])  # dropout really samples
    # with no foreground proposals, the target is exactly the mean of the samples
    from detectron2.structures import Boxes, Instances

    proposals = Instances((64, 64))
    proposals.proposal_boxes = Boxes(torch.tensor([[0.0, 0, 10, 10]] * 7))
    proposals.gt_classes = torch.full((7,), 3)  # background
    proposals.gt_boxes = Boxes(torch.zeros(7, 4))
    torch.manual_seed(123)
    targets = heads.distillation_targets(features, [proposals])
    assert torch.allclose(targets, explicit.mean(0), atol=1e-5)


def _foreground_proposals(num=6):
    from detectron2.structures import Boxes, Instances

    proposals = Instances((64, 64))
    gt = torch.tensor([10.0, 10.0, 40.0, 40.0])
    proposals.proposal_boxes = Boxes(gt.repeat(num, 1) + torch.arange(num)[:, None] * 0.5)
    proposals.gt_boxes = Boxes(gt.repeat(num, 1))
    proposals.gt_classes = torch.tensor([1] * (num - 2) + [3, 3])  # 2 background proposals
    return proposals


def test_undetected_gt_gets_uniform_target(teacher_weights):
    _, model = build_student(teacher_weights)
    heads, teacher = model.roi_heads, model.roi_heads.teacher
    features = torch.randn(6, 32, 7, 7)
    proposals = _foreground_proposals()
    with torch.no_grad():  # the teacher is sure everything is background: nothing detected
        teacher.box_predictor.cls_score.bias.zero_()
        teacher.box_predictor.cls_score.bias[3] = 50.0
    targets = heads.distillation_targets(features, [proposals])
    assert torch.equal(targets[:4], torch.zeros(4, 4))
    assert targets[4:].abs().sum() > 0  # background proposals keep the teacher's mean


def test_detected_gt_keeps_teacher_target(teacher_weights):
    _, model = build_student(teacher_weights)
    heads, teacher = model.roi_heads, model.roi_heads.teacher
    features = torch.randn(6, 32, 7, 7)
    with torch.no_grad():  # sure of class 1, boxes left in place: the GT is detected
        teacher.box_predictor.cls_score.bias.zero_()
        teacher.box_predictor.cls_score.bias[1] = 50.0
        teacher.box_predictor.bbox_pred.weight.zero_()
        teacher.box_predictor.bbox_pred.bias.zero_()
    targets = heads.distillation_targets(features, [_foreground_proposals()])
    assert (targets[:4].abs().sum(dim=1) > 0).all()


def test_missing_teacher_weights_is_a_clear_error_when_training_starts(tmp_path):
    for path, error, match in (
        ("", ValueError, "TEACHER_WEIGHTS is empty"),
        (str(tmp_path / "nope.pth"), FileNotFoundError, "no such file"),
    ):
        model = build_model(tiny_ddn_cfg(path))  # building (for evaluation) needs no teacher
        model.train()
        with pytest.raises(error, match=match), EventStorage():
            model(d2_batch())


def test_trained_student_evaluates_without_the_teacher_file(teacher_weights, tmp_path):
    import shutil

    copy = str(tmp_path / "teacher.pth")
    shutil.copy(teacher_weights, copy)
    cfg, model = build_student(copy)
    model.train()
    with EventStorage():
        model(d2_batch())  # the teacher is loaded on first use
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("student")
    import os

    os.remove(copy)  # deployed: the teacher's checkpoint is gone
    student = build_model(tiny_ddn_cfg(copy))
    DetectionCheckpointer(student).load(str(tmp_path / "student.pth"))
    student.eval()
    with torch.no_grad():
        out = student(d2_batch(num_images=1))[0]["instances"]
    assert out.has("scores")


def test_undetected_gt_is_decided_on_all_proposals_not_the_minibatch(teacher_weights):
    """A GT box the teacher detects only from a proposal the minibatch did not sample keeps
    the teacher's target; the count of uniform targets is logged."""
    from detectron2.structures import Boxes, Instances

    _, model = build_student(teacher_weights)
    heads, teacher = model.roi_heads, model.roi_heads.teacher
    with torch.no_grad():  # class 1 everywhere, boxes left in place
        teacher.box_predictor.cls_score.bias.zero_()
        teacher.box_predictor.cls_score.bias[1] = 50.0
        teacher.box_predictor.bbox_pred.weight.zero_()
        teacher.box_predictor.bbox_pred.bias.zero_()
    gt_box = torch.tensor([[10.0, 10.0, 40.0, 40.0]])
    targets = [Instances((64, 64), gt_boxes=Boxes(gt_box), gt_classes=torch.tensor([1]))]
    features = {
        f: torch.randn(1, 32, 64 // s, 64 // s) for f, s in zip(heads.box_in_features, (4, 8, 16, 32))
    }
    on_gt = Instances((64, 64), proposal_boxes=Boxes(torch.cat([gt_box, torch.tensor([[0.0, 0, 8, 8]])])))
    far = Instances((64, 64), proposal_boxes=Boxes(torch.tensor([[0.0, 0, 8, 8], [50.0, 50, 60, 60]])))
    assert len(heads.undetected_gt(features, [on_gt], targets)[0]) == 0  # found among all
    assert torch.equal(heads.undetected_gt(features, [far], targets)[0][:, :4], gt_box)
    # a sampled minibatch whose foreground proposals lie far from the GT box: without the
    # all-proposal rule they would decide "undetected"; with it the GT stays detected
    sampled = Instances(
        (64, 64),
        proposal_boxes=Boxes(torch.tensor([[20.0, 20, 30, 30]] * 3)),
        gt_boxes=Boxes(gt_box.repeat(3, 1)),
        gt_classes=torch.tensor([1, 1, 3]),
    )
    pooled = torch.randn(3, 32, 7, 7)
    with EventStorage() as storage:
        kept = heads.distillation_targets(pooled, [sampled], heads.undetected_gt(features, [on_gt], targets))
        assert storage.latest()["ddn/uniform_target_proposals"][0] == 0
        minibatch_only = heads.distillation_targets(pooled, [sampled])
        assert storage.latest()["ddn/uniform_target_proposals"][0] == 2
    assert (kept[:2].abs().sum(dim=1) > 0).all()
    assert torch.equal(minibatch_only[:2], torch.zeros(2, 4))


def test_student_inference_is_stock_single_pass(teacher_weights):
    _, model = build_student(teacher_weights)
    model.eval()
    batch = d2_batch(num_images=1)
    with torch.no_grad():
        a = model(batch)[0]["instances"]
        b = model(batch)[0]["instances"]
    assert torch.equal(a.scores, b.scores)  # deterministic: no dropout at inference
