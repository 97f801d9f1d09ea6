"""Refitting the success branch on frozen features (conf_plugins.mmseg.refit) and the
predict_with_snapshot switch, on the real mmseg."""

import pytest
import torch
from mmseg.registry import MODELS

import conf_plugins.mmseg  # noqa: F401
from conf_plugins.mmseg.refit import branch_inputs, refit_success_branch
from tests.fixtures import mmseg_batch
from tests.mmseg.test_success_head import success_model_cfg


def loader(num_batches=3):
    return [mmseg_batch(num_images=1, seed=i) for i in range(num_batches)]


def test_refit_trains_only_a_fresh_branch_and_installs_it_as_the_snapshot():
    model = MODELS.build(success_model_cfg()).eval()
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("decode_head.success_")}
    x, target = branch_inputs(model, loader())
    assert x.shape[:2] == (3, model.decode_head.channels) and target.shape == (3, 64, 64)
    summary = refit_success_branch(model, loader(), iters=20, images={0, 2})
    assert summary["pixels"] == int((branch_inputs(model, loader(), {0, 2})[1] != 255).sum())
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items() if k != "decode_head.snapshot_taken")
    assert bool(model.decode_head.snapshot_taken)
    with torch.no_grad():  # the snapshot (= refit branch) predicts success in eval mode
        packed = model.decode_head.cls_seg(x)
        assert torch.allclose(packed[:, -2:], model.decode_head.success_snapshot(x))


def test_predict_with_snapshot_false_uses_the_live_branch():
    model = MODELS.build(success_model_cfg()).eval()
    head = model.decode_head
    head.take_success_snapshot()
    with torch.no_grad():
        head.success_branch[1].weight.add_(1.0)
    x = torch.randn(1, head.channels, 8, 8)
    with torch.no_grad():
        assert torch.allclose(head.cls_seg(x)[:, -2:], head.success_snapshot(x))
        head.predict_with_snapshot = False
        assert torch.allclose(head.cls_seg(x)[:, -2:], head.success_branch(x))


def test_bad_refit_inputs_are_refused():
    model = MODELS.build(success_model_cfg()).eval()
    with pytest.raises(ValueError, match="no images"):
        refit_success_branch(model, loader(), images=set())
    with pytest.raises(ValueError, match="ignore_index"):
        refit_success_branch(model, [mmseg_batch(num_images=1, ignore_fraction=1.1)])
    cfg = success_model_cfg()
    cfg.decode_head.predict_with_snapshot = "no"
    with pytest.raises(ValueError, match="predict_with_snapshot must be True or False"):
        MODELS.build(cfg)
