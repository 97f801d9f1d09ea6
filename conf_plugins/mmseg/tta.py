"""Test-time augmentation whose confidence maps belong to the merged prediction."""

import torch
from mmengine.structures import PixelData
from mmseg.models import SegTTAModel
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

KEPT = ("gt_sem_seg",)  # copied from the first augmentation, not averaged
CALIBRATED = ("pred_confidence",)  # fitted on single-pass scores: refused under TTA


@MODELS.register_module()
class ConfidenceSegTTAModel(SegTTAModel):
    """``SegTTAModel`` that merges every per-pixel map, not just the prediction.

    The stock merge averages the softmax of ``out_channels`` channels into ``pred_sem_seg``
    and keeps the *last* augmentation's ``seg_logits`` and other maps, so a confidence
    computed from them does not belong to the merged prediction (and the success channel of
    ``SuccessEncoderDecoder`` would enter the softmax). Here, per image: ``seg_logits`` = log
    of the mean softmax of the augmentations (so ``max_softmax`` is the merged prediction's
    confidence), ``pred_sem_seg`` = its argmax, and every other per-pixel map (e.g.
    ``success_score``, ``mc_entropy``) is the mean over augmentations.

    ``pred_confidence`` (Bayes binning) and per-pixel calibrated logits (metainfo
    ``pixel_calibration``) are refused: they were fitted on single-pass outputs, and the mean
    of several augmentations has another distribution. Evaluate ``success_score`` under TTA,
    or the single-pass model.
    """

    def merge_preds(self, data_samples_list):  # override: the stock merge drops our maps
        return [self.merge_one(samples) for samples in data_samples_list]

    @staticmethod
    def merge_one(samples) -> SegDataSample:
        first = samples[0]
        if first.metainfo.get("pixel_calibration"):
            raise ValueError(
                f"the {first.metainfo['pixel_calibration']} calibration of the seg logits cannot be "
                "merged under test-time augmentation: it was fitted on single-pass logits. Test "
                "without --tta, or with the uncalibrated model"
            )
        for name in CALIBRATED:
            if name in first:
                raise ValueError(
                    f"'{name}' cannot be merged under test-time augmentation: its "
                    "calibration was fitted on single-pass scores. Evaluate "
                    "'success_score' with TTA, or test without --tta"
                )
        probs = torch.stack([s.seg_logits.data.softmax(dim=0) for s in samples]).mean(0)
        merged = SegDataSample(metainfo=dict(first.metainfo))
        fields = {
            "seg_logits": PixelData(data=probs.clamp(min=torch.finfo(probs.dtype).tiny).log()),
            "pred_sem_seg": PixelData(data=probs.argmax(dim=0, keepdim=True)),
        }
        for name in first.keys():
            if name in fields:
                continue
            if name in KEPT:
                fields[name] = first.get(name)
            elif isinstance(first.get(name), PixelData):
                maps = torch.stack([s.get(name).data.float() for s in samples])
                fields[name] = PixelData(data=maps.mean(0))
        merged.set_data(fields)
        return merged
