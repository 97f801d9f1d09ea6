"""EncoderDecoder that turns the success branch into a per-pixel probability of success."""
import torch
from mmengine.structures import PixelData
from mmseg.models import EncoderDecoder
from mmseg.registry import MODELS

from conf_plugins.calibration import BayesBinningCalibrator

from .success_head import SuccessBranchMixin


@MODELS.register_module()
class SuccessEncoderDecoder(EncoderDecoder):
    """Identical to ``EncoderDecoder`` except that every predicted ``SegDataSample`` also
    carries the success branch's output:

    * ``success_score``: softmax probability of success s (1, H, W);
    * ``pred_confidence``: the probability of success P(S|s) from Bayes binning (success
      paper §3.2), once fitted (``tools/fit_calibration.py``); absent before.

    The head appends the success log-odds as an extra channel, so the stock whole / slide
    inference and ``postprocess_result`` (padding, flip, resize) treat it exactly like the
    seg logits; we then split it off. The Bayes-binning counts are buffers of this model:
    they are saved in, and loaded from, its checkpoint.

    Args (beyond EncoderDecoder's):
        bayes_num_bins (int): M equal bins of s for Bayes binning. Default 10.
    """

    def __init__(self, *args, bayes_num_bins: int = 10, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.decode_head, SuccessBranchMixin):
            raise TypeError("SuccessEncoderDecoder needs a success decode head (FCNSuccessHead,"
                            f" ASPPSuccessHead, ...), got {type(self.decode_head).__name__}")
        self.decode_head.emit_success_channel = True
        self.out_channels += 1  # slide inference allocates out_channels per pixel
        calibrator = BayesBinningCalibrator(bayes_num_bins)
        self.register_buffer("bayes_counts", torch.zeros(2, bayes_num_bins, dtype=torch.float64))
        self._bayes_num_bins = bayes_num_bins
        del calibrator

    @property
    def calibrated(self) -> bool:
        return bool(self.bayes_counts.sum() > 0)

    def calibrator(self) -> BayesBinningCalibrator:
        """The fitted Bayes-binning calibrator held in this model's buffers."""
        calibrator = BayesBinningCalibrator(self._bayes_num_bins)
        calibrator.set_counts(self.bayes_counts[0], self.bayes_counts[1])
        return calibrator

    def set_calibrator(self, calibrator: BayesBinningCalibrator):
        failures, successes = calibrator.counts()
        self.bayes_counts.copy_(torch.stack([failures, successes]).to(self.bayes_counts))

    def postprocess_result(self, seg_logits, data_samples=None):
        data_samples = super().postprocess_result(seg_logits, data_samples)
        calibrator = self.calibrator() if self.calibrated else None
        for sample in data_samples:
            packed = sample.seg_logits.data
            seg, success_logit = packed[:-1], packed[-1:]
            score = success_logit.sigmoid()
            fields = {"seg_logits": PixelData(data=seg),
                      "pred_sem_seg": PixelData(data=seg.argmax(dim=0, keepdim=True)),
                      "success_score": PixelData(data=score)}
            if calibrator is not None:
                fields["pred_confidence"] = PixelData(data=calibrator.predict(score))
            sample.set_data(fields)
        return data_samples
