"""EncoderDecoder that turns the success branch into a per-pixel probability of success."""

import torch
from mmengine.structures import PixelData
from mmseg.models import EncoderDecoder
from mmseg.registry import MODELS

from conf_plugins.calibration import BayesBinningCalibrator
from conf_plugins.calibration.bayes_binning import FORMAT_VERSION
from conf_plugins.calibration.fingerprint import FingerprintVerifiedOnce, weights_fingerprint

from .success_head import SuccessBranchMixin


@MODELS.register_module()
class SuccessEncoderDecoder(FingerprintVerifiedOnce, EncoderDecoder):
    """Identical to ``EncoderDecoder`` except that every predicted ``SegDataSample`` also
    carries the success branch's output:

    * ``success_score``: softmax probability of success s, shape (1, H, W);
    * ``pred_confidence``: probability of success P(S|s) by Bayes binning (success paper
      §3.2), once fitted (``tools/fit_calibration.py``); absent before.

    The head appends the success log-odds as an extra channel, so the stock whole / slide
    inference and ``postprocess_result`` (padding, flip, resize) treat it exactly like the
    seg logits; we then split it off. The Bayes-binning counts are buffers of this model, so
    they are saved in, and loaded from, its checkpoint, together with a fingerprint (SHA-256)
    of every weight and buffer of the model they were fitted for — backbone, neck, both
    branches: the PoS depends on all of them — so a calibration that does not belong to the
    weights (e.g. after fine-tuning from a ``*_bayes.pth``) is an error, not a silently wrong
    PoS (verified once per load / train-eval switch: :class:`FingerprintVerifiedOnce`).

    Args (beyond EncoderDecoder's):
        bayes_num_bins (int): M equal bins of s for Bayes binning. Default 10.
    """

    def __init__(self, *args, bayes_num_bins: int = 10, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.decode_head, SuccessBranchMixin):
            raise TypeError(
                "SuccessEncoderDecoder needs a success decode head (FCNSuccessHead,"
                f" ASPPSuccessHead, ...), got {type(self.decode_head).__name__}"
            )
        self.decode_head.emit_success_channel = True
        self.out_channels += 1  # slide inference allocates out_channels channels per pixel
        self.bayes_num_bins = bayes_num_bins
        # rows: failure counts, success counts
        self.register_buffer("bayes_counts", torch.zeros(2, bayes_num_bins, dtype=torch.float64))
        self.register_buffer("bayes_fingerprint", torch.zeros(32, dtype=torch.uint8))

    @property
    def calibrated(self) -> bool:
        return bool(self.bayes_counts.sum() > 0)

    def weights_fingerprint(self) -> torch.Tensor:
        """SHA-256 (32 uint8) of every weight and buffer except the calibration's own."""
        return weights_fingerprint(
            (name, t)
            for name, t in self.state_dict().items()
            if name not in ("bayes_counts", "bayes_fingerprint")
        )

    def calibrator(self) -> BayesBinningCalibrator:
        """The fitted Bayes-binning calibrator held in this model's buffers."""
        if not self.calibrated:
            raise RuntimeError("Bayes binning is not fitted: run tools/fit_calibration.py")
        self.verify_fingerprint_once(self._verify_fingerprint)
        return BayesBinningCalibrator.from_state_dict(
            {
                "format_version": FORMAT_VERSION,
                "num_bins": self.bayes_num_bins,
                "failure_counts": self.bayes_counts[0].cpu(),
                "success_counts": self.bayes_counts[1].cpu(),
            }
        )

    def _verify_fingerprint(self):
        if not torch.equal(self.weights_fingerprint(), self.bayes_fingerprint.cpu()):
            raise RuntimeError(
                "the Bayes-binning calibration in this model was fitted for "
                "other weights (stale calibration, e.g. after fine-tuning): "
                "refit it with tools/fit_calibration.py"
            )

    def set_calibrator(self, calibrator: BayesBinningCalibrator):
        """Store a fitted calibrator (and the fingerprint of the current success weights)."""
        if calibrator.num_bins != self.bayes_num_bins:
            raise ValueError(
                f"calibrator has {calibrator.num_bins} bins, the model {self.bayes_num_bins} (bayes_num_bins)"
            )
        counts = torch.stack([calibrator.failure_counts, calibrator.success_counts])
        self.bayes_counts.copy_(counts.to(self.bayes_counts))
        self.bayes_fingerprint.copy_(self.weights_fingerprint())
        self.forget_verified()

    def postprocess_result(self, seg_logits, data_samples=None):
        data_samples = super().postprocess_result(seg_logits, data_samples)
        calibrator = self.calibrator() if self.calibrated else None
        for sample in data_samples:
            packed = sample.seg_logits.data
            seg, success_logit = packed[:-1], packed[-1:]
            score = success_logit.sigmoid()
            fields = {
                "seg_logits": PixelData(data=seg),
                "pred_sem_seg": PixelData(data=seg.argmax(dim=0, keepdim=True)),
                "success_score": PixelData(data=score),
            }
            if calibrator is not None:
                fields["pred_confidence"] = PixelData(data=calibrator.predict(score))
            sample.set_data(fields)
        return data_samples
