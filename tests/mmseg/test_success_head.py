"""Success heads, uncertainty weighting and the PoS segmentor with the real mmseg on CPU."""

import copy

import pytest
import torch
from mmengine.optim import OptimWrapper, build_optim_wrapper
from mmseg.registry import MODELS

import conf_plugins.mmseg  # noqa: F401  (registers our components)
from conf_plugins.calibration import BayesBinningCalibrator
from conf_plugins.mmseg import SuccessEncoderDecoder, success_target
from tests.fixtures import mmseg_batch, tiny_mmseg_model_cfg

HEADS = {
    "FCNHead": "FCNSuccessHead",
    "ASPPHead": "ASPPSuccessHead",
    "DepthwiseSeparableASPPHead": "DepthwiseSeparableASPPSuccessHead",
}
WEIGHTING = dict(
    type="UncertaintyWeightedLoss",
    task_names=["seg", "success"],
    task_types=["classification", "classification"],
)


def success_model_cfg(stock_head="FCNHead", weighting=True, **kwargs):
    cfg = tiny_mmseg_model_cfg(stock_head)
    cfg.type = "SuccessEncoderDecoder"
    cfg.decode_head.type = HEADS[stock_head]
    if weighting:
        cfg.decode_head.task_weighting = copy.deepcopy(WEIGHTING)
    cfg.update(kwargs)
    return cfg


def test_success_target_by_hand():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 0, 0, 0] = logits[0, 1, 0, 1] = logits[0, 2, 1, 0] = logits[0, 2, 1, 1] = 5.0
    label = torch.tensor([[[[0, 2], [2, 255]]]])  # right, wrong, right, ignored
    target = success_target(logits, label, ignore_index=255, align_corners=False)
    assert target.tolist() == [[[1, 0], [1, 255]]]


@pytest.mark.parametrize("stock_head", list(HEADS))
def test_train_step_logs_weighted_tasks_and_sigmas(stock_head):
    model = MODELS.build(success_model_cfg(stock_head))
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01))
    sigmas_before = model.decode_head.task_weighting.sigmas()
    log_vars = model.train_step(mmseg_batch(), optim)
    for key in (
        "loss_seg",
        "loss_success",
        "raw_seg",
        "raw_success",
        "sigma_seg",
        "sigma_success",
        "acc_success",
    ):
        assert f"decode.{key}" in log_vars, key
    summed = log_vars["decode.loss_seg"] + log_vars["decode.loss_success"]
    assert torch.allclose(log_vars["loss"], summed)  # raw terms are logged, never summed
    sigmas_after = model.decode_head.task_weighting.sigmas()  # got gradients, were updated
    assert all(sigmas_after[t] != sigmas_before[t] for t in ("seg", "success"))


def test_success_branch_reads_the_classifier_features_for_deeplabv3plus():
    model = MODELS.build(success_model_cfg("DepthwiseSeparableASPPHead"))
    head = model.decode_head
    assert head.success_branch[0].conv.in_channels == head.conv_seg.in_channels == head.channels


def test_sigmas_get_no_weight_decay_from_paramwise_cfg():
    model = MODELS.build(success_model_cfg())
    wrapper = build_optim_wrapper(
        model,
        dict(
            optimizer=dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=5e-4),
            paramwise_cfg=dict(custom_keys={"log_vars": dict(decay_mult=0.0)}),
        ),
    )
    sigma_ids = {id(p) for p in model.decode_head.task_weighting.parameters()}
    for group in wrapper.optimizer.param_groups:
        if any(id(p) in sigma_ids for p in group["params"]):
            assert group["weight_decay"] == 0.0
        else:
            assert group["weight_decay"] == 5e-4


def test_snapshot_predicts_success_after_branch_moves_on():
    model = MODELS.build(success_model_cfg())
    head = model.decode_head
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    model.train_step(mmseg_batch(), optim)
    head.take_success_snapshot()
    snapshot = copy.deepcopy(head.success_snapshot.state_dict())
    model.train_step(mmseg_batch(seed=3), optim)
    for k, v in head.success_snapshot.state_dict().items():
        assert torch.equal(v, snapshot[k]), k  # the snapshot is frozen
    assert not torch.equal(head.success_branch[1].weight, head.success_snapshot[1].weight)
    assert all(not p.requires_grad for p in head.success_snapshot.parameters())
    model.eval()
    feat = torch.randn(1, head.channels, 4, 4)
    packed = head.cls_seg(feat)
    assert torch.allclose(packed[:, -2:], head.success_snapshot(feat))


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_pos_map_through_inference_flip_and_resize(mode):
    test_cfg = dict(mode=mode, crop_size=(40, 40), stride=(24, 24)) if mode == "slide" else dict(mode="whole")
    model = MODELS.build(success_model_cfg(test_cfg=test_cfg)).eval()
    calibrator = BayesBinningCalibrator(10).fit(torch.rand(1000), torch.rand(1000) < 0.7)
    model.set_calibrator(calibrator)
    batch = mmseg_batch(num_images=2)
    batch["data_samples"][1].set_metainfo(dict(flip=True, flip_direction="horizontal", ori_shape=(48, 80)))
    with torch.no_grad():
        samples = model.test_step(batch)
    assert samples[0].pred_confidence.data.shape == (1, 64, 64)
    assert samples[1].pred_confidence.data.shape == (1, 48, 80)  # resized to ori_shape
    for s in samples:
        assert s.seg_logits.data.shape[0] == 4 and s.pred_sem_seg.data.max() < 4
        pos, score = s.pred_confidence.data, s.success_score.data
        assert ((pos >= 0) & (pos <= 1)).all() and ((score >= 0) & (score <= 1)).all()
        assert torch.allclose(pos, calibrator.predict(score).to(pos))


def test_stale_or_missing_calibration_is_a_clear_error():
    model = MODELS.build(success_model_cfg())
    with pytest.raises(RuntimeError, match="not fitted"):
        model.calibrator()
    model.set_calibrator(BayesBinningCalibrator(10).fit(torch.rand(100), torch.rand(100) < 0.5))
    model.calibrator()  # matches the current weights
    model.decode_head.take_success_snapshot()  # a new snapshot: the calibration is stale
    with torch.no_grad():
        model.decode_head.success_snapshot[1].weight.add_(0.5)
    with pytest.raises(RuntimeError, match="stale"):
        model.calibrator()
    with pytest.raises(ValueError, match="bins"):
        model.set_calibrator(BayesBinningCalibrator(5))


def test_wrong_head_and_all_ignore_are_clear_errors():
    cfg = tiny_mmseg_model_cfg()
    cfg.type = "SuccessEncoderDecoder"
    with pytest.raises(TypeError, match="success decode head"):
        MODELS.build(cfg)
    model = MODELS.build(success_model_cfg())
    batch = mmseg_batch(ignore_fraction=1.1)
    with pytest.raises(ValueError, match="ignore_index"):
        model.train_step(batch, OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01)))


def test_segmentor_is_registered_type():
    assert MODELS.get("SuccessEncoderDecoder") is SuccessEncoderDecoder


def test_balanced_class_weight_gives_each_class_half_the_loss():
    from conf_plugins.mmseg.success_head import balanced_class_weight

    target = torch.tensor([[1, 1, 1, 0], [1, 1, 255, 255]])  # 5 successes, 1 failure, 2 ignored
    weight = balanced_class_weight(target, ignore_index=255)
    assert weight.tolist() == pytest.approx([6 / 2, 6 / 10])
    assert (weight * torch.tensor([1.0, 5.0])).tolist() == pytest.approx([3.0, 3.0])
    only_success = balanced_class_weight(torch.ones(2, 2, dtype=torch.long), 255)
    assert only_success.tolist() == [0.0, 0.5]  # 4 / (2 · 4); the absent class gets 0


@pytest.mark.parametrize("stock_head", list(HEADS))
def test_success_branch_options_train_and_predict(stock_head):
    cfg = success_model_cfg(stock_head)
    cfg.decode_head.update(success_class_weight="balanced", success_inputs=("features", "seg_confidence"))
    model = MODELS.build(cfg)
    head = model.decode_head
    assert head.success_branch[0].conv.in_channels == head.channels + 2
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01))
    log_vars = model.train_step(mmseg_batch(), optim)
    assert torch.isfinite(log_vars["decode.raw_success"])
    model.eval()
    with torch.no_grad():
        (sample, *_) = model.test_step(mmseg_batch(num_images=1))
    score = sample.success_score.data
    assert score.shape == sample.pred_sem_seg.data.shape and ((score >= 0) & (score <= 1)).all()


def test_seg_confidence_channels_by_hand():
    from conf_plugins.mmseg.success_head import seg_confidence_channels

    logits = torch.tensor([2.0, 0.0, -1.0]).view(1, 3, 1, 1)
    channels = seg_confidence_channels(logits)
    assert channels[0, 0].item() == pytest.approx(torch.tensor([2.0, 0.0, -1.0]).softmax(0).max())
    assert channels[0, 1].item() == pytest.approx(2.0)


def test_success_branch_options_are_validated():
    cfg = success_model_cfg()
    cfg.decode_head.success_class_weight = "inverse"
    with pytest.raises(ValueError, match="success_class_weight"):
        MODELS.build(cfg)
    cfg = success_model_cfg()
    cfg.decode_head.success_inputs = ("margin",)
    with pytest.raises(ValueError, match="success_inputs"):
        MODELS.build(cfg)


def test_fusion_probability_of_success_is_held_and_guarded():
    """pos_map='fusion': pred_confidence = sigmoid(a·logit(s) + b·logit(max softmax) + c)
    from the buffers, through the stock inference; stale weights are an error."""
    model = MODELS.build(success_model_cfg(pos_map="fusion")).eval()
    with torch.no_grad():
        assert "pred_confidence" not in model.test_step(mmseg_batch(num_images=1))[0]  # not fitted yet
    model.set_fusion([0.7, 1.3, -0.2])
    with torch.no_grad():
        (sample,) = model.test_step(mmseg_batch(num_images=1))
    score, logits = sample.success_score.data.double(), sample.seg_logits.data.double()
    max_softmax = logits.softmax(0).amax(0, keepdim=True)
    lo = lambda p: torch.log(p.clamp(1e-6, 1 - 1e-6) / (1 - p.clamp(1e-6, 1 - 1e-6)))  # noqa: E731
    expected = torch.sigmoid(0.7 * lo(score) + 1.3 * lo(max_softmax) - 0.2)
    assert torch.allclose(sample.pred_confidence.data.double(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="not Bayes binning"):
        model.calibrator()
    with pytest.raises(ValueError, match="3 finite numbers"):
        model.set_fusion([1.0, float("nan"), 0.0])
    with torch.no_grad():
        model.decode_head.conv_seg.weight.add_(0.1)  # fine-tuned after the fit
        model.forget_verified()
        with pytest.raises(
            RuntimeError, match="fusion calibration in this model was fitted for other weights"
        ):
            model.test_step(mmseg_batch(num_images=1))
    with pytest.raises(ValueError, match="pos_map must be one of"):
        MODELS.build(success_model_cfg(pos_map="platt"))
