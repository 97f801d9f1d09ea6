"""The real mmseg stack: EncoderDecoder with FCN and ASPP heads trains a step and predicts."""

import pytest
import torch
from mmengine.optim import OptimWrapper
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

from tests.fixtures import mmseg_batch, tiny_mmseg_model_cfg

register_all_modules()


@pytest.mark.parametrize("head", ["FCNHead", "ASPPHead"])
def test_encoder_decoder_train_step_and_predict(head):
    model = MODELS.build(tiny_mmseg_model_cfg(head))
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01))
    before = model.decode_head.conv_seg.weight.detach().clone()

    model.train()
    log_vars = model.train_step(mmseg_batch(), optim)
    assert "decode.loss_ce" in log_vars and torch.isfinite(log_vars["loss"])
    assert not torch.equal(before, model.decode_head.conv_seg.weight)

    model.eval()
    (sample,) = model.test_step(mmseg_batch(num_images=1, seed=1))
    assert sample.pred_sem_seg.data.shape == (1, 64, 64)
    assert sample.seg_logits.data.shape == (4, 64, 64)
