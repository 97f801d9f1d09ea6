"""MC dropout for mmseg (MCDropoutEncoderDecoder) with the real mmseg on CPU."""

import pytest
import torch
from mmseg.registry import MODELS

import conf_plugins.mmseg  # noqa: F401  (registers our components)
from conf_plugins.mmseg import mc_dropout_statistics
from tests.fixtures import mmseg_batch, tiny_mmseg_model_cfg


def mc_cfg(stock_head="FCNHead", mc_samples=6, **head_kwargs):
    cfg = tiny_mmseg_model_cfg(stock_head, **head_kwargs)
    cfg.type = "MCDropoutEncoderDecoder"
    cfg.mc_samples = mc_samples
    return cfg


def test_statistics_match_an_explicit_sample_loop():
    logits = torch.randn(5, 2, 4, 3, 3, generator=torch.Generator().manual_seed(1)) * 3
    log_mean, entropy, mutual_information = mc_dropout_statistics(logits)
    for n in range(2):
        for i in range(3):
            for j in range(3):
                samples = [logits[m, n, :, i, j].softmax(0) for m in range(5)]
                mean = sum(samples) / 5
                h = -(mean * mean.log()).sum()
                expected_h = sum(-(p * p.log()).sum() for p in samples) / 5
                assert torch.allclose(log_mean[n, :, i, j].exp(), mean, atol=1e-6)
                assert entropy[n, 0, i, j].item() == pytest.approx(h.item(), abs=1e-5)
                assert mutual_information[n, 0, i, j].item() == pytest.approx(
                    (h - expected_h).item(), abs=1e-5
                )


@pytest.mark.parametrize("stock_head", ["FCNHead", "ASPPHead"])
def test_predictions_carry_mean_softmax_entropy_and_mutual_information(stock_head):
    model = MODELS.build(mc_cfg(stock_head)).eval()
    with torch.no_grad():
        samples = model.test_step(mmseg_batch(num_images=2))
    for sample in samples:
        probs = sample.seg_logits.data.softmax(0)
        assert probs.shape[0] == 4 and torch.equal(sample.pred_sem_seg.data[0], probs.argmax(0))
        entropy, mi = sample.mc_entropy.data, sample.mc_mutual_information.data
        assert entropy.shape == mi.shape == sample.pred_sem_seg.data.shape
        assert (mi >= 0).all() and (mi <= entropy + 1e-5).all() and mi.max() > 0  # samples differ
    assert not any(m.training for m in model.modules())  # dropout back in eval mode


def test_without_dropout_noise_it_is_the_single_pass():
    """Dropout sampled at p = 0: the M samples coincide, so MC equals the stock single pass
    (and batch norm stayed in eval mode)."""
    mc = MODELS.build(mc_cfg()).eval()
    stock_cfg = tiny_mmseg_model_cfg()
    stock = MODELS.build(stock_cfg).eval()
    stock.load_state_dict(mc.state_dict())
    mc.decode_head.dropout.p = 0.0
    batch = mmseg_batch(num_images=1)
    with torch.no_grad():
        (ours,) = mc.test_step(batch)
        (ref,) = stock.test_step(batch)
    assert torch.allclose(ours.seg_logits.data.softmax(0), ref.seg_logits.data.softmax(0), atol=1e-5)
    assert ours.mc_mutual_information.data.abs().max() < 1e-5


def test_training_is_the_stock_one():
    model = MODELS.build(mc_cfg())
    losses = model.loss(*model.data_preprocessor(mmseg_batch(), True).values())
    assert set(losses) == {"decode.loss_ce", "decode.acc_seg"}


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="mc_samples"):
        MODELS.build(mc_cfg(mc_samples=1))
    with pytest.raises(ValueError, match="needs dropout in the decode head"):
        MODELS.build(mc_cfg(dropout_ratio=0.0))


@pytest.mark.parametrize("stock_head", ["FCNHead", "ASPPHead"])
def test_head_convs_run_once_with_the_same_samples_as_repeating_the_features(stock_head):
    """The fast path (dropout input repeated M times) draws the very masks of the full
    repeat (same shape, same RNG order) and gives the same logits; the convs run once."""
    from conf_plugins.mmseg.mc_dropout import sampled_dropout

    model = MODELS.build(mc_cfg(stock_head, mc_samples=4)).eval()
    batch = model.data_preprocessor(mmseg_batch(num_images=2), False)
    metas = [s.metainfo for s in batch["data_samples"]]
    calls = []
    hook = model.decode_head.conv_seg.register_forward_pre_hook(
        lambda module, args: calls.append(args[0].shape[0])
    )
    torch.manual_seed(3)
    with torch.no_grad():
        fast = model.encode_decode(batch["inputs"], metas)
    hook.remove()
    assert calls == [8]  # conv_seg on M x N samples, everything before it on N
    torch.manual_seed(3)
    with torch.no_grad(), sampled_dropout(model.decode_head):
        features = model.extract_feat(batch["inputs"])
        logits = model.decode_head.forward([f.repeat(4, 1, 1, 1) for f in features])
    log_mean, entropy, mi = mc_dropout_statistics(logits.view(4, 2, *logits.shape[1:]))
    slow = model.decode_head.predict_by_feat(torch.cat([log_mean, entropy, mi], 1), metas)
    assert torch.allclose(fast, slow, atol=1e-5)
