"""Segmentors that hold their post-hoc calibration: ``SuccessEncoderDecoder`` turns the
success branch into a per-pixel probability of success; ``CalibratedEncoderDecoder`` (and the
success model, with ``pixel_calibration``) divides the seg logits by a fitted per-pixel
temperature (Selective Scaling, local temperature scaling)."""

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from mmengine.structures import PixelData
from mmseg.models import EncoderDecoder
from mmseg.registry import MODELS

from conf_plugins.calibration import BayesBinningCalibrator
from conf_plugins.calibration.bayes_binning import FORMAT_VERSION
from conf_plugins.calibration.fingerprint import FingerprintVerifiedOnce, weights_fingerprint
from conf_plugins.calibration.logistic import logit
from conf_plugins.calibration.pixel_calibrators import (
    IMAGE_CHANNELS,
    SelectiveScaling,
    build_pixel_calibrator,
)

from .success_head import SuccessBranchMixin

PIXEL_CALIBRATION_KEYS = ("pixel_calibrator.", "pixel_calibration_fingerprint")


class PixelCalibrationMixin:
    """A per-pixel calibrator of the seg logits held by the segmentor (``pixel_calibration``
    = ``'selective_scaling'``, ``'local_temperature'``, ``'local_temperature_image'`` or
    ``'image_temperature'``, see
    ``conf_plugins.calibration.pixel_calibrators``): its parameters are buffers of the model
    under ``pixel_calibrator.``, sealed by the fingerprint of every other weight and buffer
    (``pixel_calibration_fingerprint``), fitted by ``tools/fit_calibration.py``. Once fitted,
    predictions carry the calibrated ``seg_logits`` (same argmax, so the same
    ``pred_sem_seg``) and the metainfo ``pixel_calibration``; before, prediction is refused."""

    def init_pixel_calibration(self, pixel_calibration):
        self.pixel_calibration = pixel_calibration
        self._pixel_calibration_bypassed = False
        if pixel_calibration is None:
            return
        self.pixel_calibrator = build_pixel_calibrator(pixel_calibration, self.num_classes)
        self.register_buffer("pixel_calibration_fingerprint", torch.zeros(32, dtype=torch.uint8))

    @property
    def reads_image(self) -> bool:
        """Whether the pixel calibrator reads the image beside the logits."""
        return getattr(getattr(self, "pixel_calibrator", None), "image_channels", 0) > 0

    @property
    def pixel_calibrated(self) -> bool:
        return self.pixel_calibration is not None and bool(self.pixel_calibration_fingerprint.any())

    def pixel_weights_fingerprint(self) -> torch.Tensor:
        """SHA-256 of every weight and buffer except the pixel calibrator's own."""
        return weights_fingerprint(
            (name, t) for name, t in self.state_dict().items() if not name.startswith(PIXEL_CALIBRATION_KEYS)
        )

    def seal_pixel_calibration(self):
        """Mark the (just fitted) pixel calibrator as belonging to the current weights."""
        self.pixel_calibration_fingerprint.copy_(self.pixel_weights_fingerprint())
        self.forget_verified()

    def _verify_pixel_fingerprint(self):
        if self.pixel_calibrated and not torch.equal(
            self.pixel_weights_fingerprint(), self.pixel_calibration_fingerprint.cpu()
        ):
            raise RuntimeError(
                f"the {self.pixel_calibration} calibration in this model was fitted for other "
                "weights (stale calibration): refit it with tools/fit_calibration.py"
            )

    def _verify_fingerprint(self):
        self._verify_pixel_fingerprint()

    @contextmanager
    def uncalibrated_logits(self):
        """Predict raw seg logits inside the block (what the fit of the calibrator reads)."""
        self._pixel_calibration_bypassed = True
        try:
            yield self
        finally:
            self._pixel_calibration_bypassed = False

    def calibrate_seg_logits(self, seg: torch.Tensor, right_probability=None, image=None) -> torch.Tensor:
        """``seg`` (C, H, W) divided by the fitted per-pixel temperature (``image`` (3, H, W):
        what a calibrator that reads the image sees)."""
        if self.pixel_calibration is None or self._pixel_calibration_bypassed:
            return seg
        if not self.pixel_calibrated:
            raise RuntimeError(
                f"pixel_calibration='{self.pixel_calibration}' is not fitted in these weights: "
                "run tools/fit_calibration.py on held-out data first"
            )
        self.verify_fingerprint_once(self._verify_fingerprint)
        if isinstance(self.pixel_calibrator, SelectiveScaling):
            return self.pixel_calibrator(seg, right_probability, dim=0)
        return self.pixel_calibrator(seg, image)

    def mark_calibrated(self, sample):
        if self.pixel_calibration is not None and not self._pixel_calibration_bypassed:
            sample.set_metainfo({"pixel_calibration": self.pixel_calibration})


@MODELS.register_module()
class CalibratedEncoderDecoder(PixelCalibrationMixin, FingerprintVerifiedOnce, EncoderDecoder):
    """``EncoderDecoder`` (any decode head: the STL model) that holds a per-pixel calibrator
    of its seg logits (:class:`PixelCalibrationMixin`).

    Args (beyond EncoderDecoder's):
        pixel_calibration (str): ``'selective_scaling'`` (Wang et al., CVPR 2023),
            ``'local_temperature'`` (Ding et al., ICCV 2021, from the logits) or
            ``'local_temperature_image'`` (from the logits and the normalised image, which
            then travels as extra channels beside the logits through the stock whole / slide
            inference and resize; while fitting, samples carry it as ``calibration_image``)
            or ``'image_temperature'`` (one temperature per image from its own logits).
    """

    def __init__(self, *args, pixel_calibration: str = "selective_scaling", **kwargs):
        super().__init__(*args, **kwargs)
        self.init_pixel_calibration(pixel_calibration)
        if self.reads_image:
            self.out_channels += IMAGE_CHANNELS  # slide inference allocates out_channels channels

    def encode_decode(self, inputs, batch_img_metas):
        seg = super().encode_decode(inputs, batch_img_metas)
        if not self.reads_image:
            return seg
        image = inputs.to(seg.dtype)
        if image.shape[2:] != seg.shape[2:]:
            image = F.interpolate(image, size=seg.shape[2:], mode="bilinear", align_corners=False)
        return torch.cat([seg, image], dim=1)

    def postprocess_result(self, seg_logits, data_samples=None):
        data_samples = super().postprocess_result(seg_logits, data_samples)
        for sample in data_samples:
            seg, image = sample.seg_logits.data, None
            if self.reads_image:
                seg, image = seg[: self.num_classes], seg[self.num_classes :]
                sample.pred_sem_seg = PixelData(data=seg.argmax(dim=0, keepdim=True))
                if self._pixel_calibration_bypassed:
                    sample.calibration_image = PixelData(data=image)
            sample.seg_logits = PixelData(data=self.calibrate_seg_logits(seg, image=image))
            self.mark_calibrated(sample)
        return data_samples


@MODELS.register_module()
class SuccessEncoderDecoder(PixelCalibrationMixin, FingerprintVerifiedOnce, EncoderDecoder):
    """Identical to ``EncoderDecoder`` except that every predicted ``SegDataSample`` also
    carries the success branch's output:

    * ``success_score``: softmax probability of success s, shape (1, H, W);
    * ``pred_confidence``: the probability of success, once fitted
      (``tools/fit_calibration.py``; absent before): with ``pos_map='bayes'`` P(S|s) by
      Bayes binning of the success score (success paper §3.2); with ``pos_map='fusion'``
      sigmoid(a·logit(s) + b·logit(m) + c), a logistic regression on the log-odds of the
      success score s and of the same network's max softmax m (what the success study
      found to beat the max softmax in domain), held as the buffer ``fusion_coef``.

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
        pos_map (str): ``'bayes'`` (default) or ``'fusion'``: which map turns the branch's
            output into ``pred_confidence``.
        pixel_calibration (str | None): a per-pixel calibrator of the seg logits
            (:class:`PixelCalibrationMixin`); Selective Scaling then selects by the
            probability of success. Default None.
    """

    POS_MAPS = ("bayes", "fusion")
    CALIBRATION_BUFFERS = ("bayes_counts", "bayes_fingerprint", "fusion_coef", "fusion_fingerprint")

    def __init__(
        self, *args, bayes_num_bins: int = 10, pos_map: str = "bayes", pixel_calibration=None, **kwargs
    ):
        super().__init__(*args, **kwargs)
        if pos_map not in self.POS_MAPS:
            raise ValueError(f"pos_map must be one of {self.POS_MAPS}, got {pos_map!r}")
        self.pos_map = pos_map
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
        if pos_map == "fusion":  # only then: checkpoints of Bayes-binning models keep their keys
            self.register_buffer("fusion_coef", torch.zeros(3, dtype=torch.float64))
            self.register_buffer("fusion_fingerprint", torch.zeros(32, dtype=torch.uint8))
        self.init_pixel_calibration(pixel_calibration)
        if self.reads_image:
            raise ValueError(
                "pixel_calibration='local_temperature_image' is held by CalibratedEncoderDecoder; "
                "a success model takes 'selective_scaling' or 'local_temperature'"
            )

    @property
    def calibrated(self) -> bool:
        if self.pos_map == "fusion":
            return bool(self.fusion_fingerprint.any())
        return bool(self.bayes_counts.sum() > 0)

    def weights_fingerprint(self) -> torch.Tensor:
        """SHA-256 (32 uint8) of every weight and buffer except the calibration's own."""
        return weights_fingerprint(
            (name, t)
            for name, t in self.state_dict().items()
            if name not in self.CALIBRATION_BUFFERS and not name.startswith(PIXEL_CALIBRATION_KEYS)
        )

    def calibrator(self) -> BayesBinningCalibrator:
        """The fitted Bayes-binning calibrator held in this model's buffers."""
        if self.pos_map != "bayes":
            raise ValueError(
                f"this model maps its success score with pos_map='{self.pos_map}', not Bayes binning"
            )
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
        self._verify_pixel_fingerprint()
        if not self.calibrated:
            return
        sealed = self.fusion_fingerprint if self.pos_map == "fusion" else self.bayes_fingerprint
        if not torch.equal(self.weights_fingerprint(), sealed.cpu()):
            raise RuntimeError(
                f"the {self.pos_map} calibration in this model was fitted for "
                "other weights (stale calibration, e.g. after fine-tuning): "
                "refit it with tools/fit_calibration.py"
            )

    def set_calibrator(self, calibrator: BayesBinningCalibrator):
        """Store a fitted calibrator (and the fingerprint of the current success weights)."""
        if self.pos_map != "bayes":
            raise ValueError(f"set_calibrator stores Bayes binning; this model has pos_map='{self.pos_map}'")
        if calibrator.num_bins != self.bayes_num_bins:
            raise ValueError(
                f"calibrator has {calibrator.num_bins} bins, the model {self.bayes_num_bins} (bayes_num_bins)"
            )
        counts = torch.stack([calibrator.failure_counts, calibrator.success_counts])
        self.bayes_counts.copy_(counts.to(self.bayes_counts))
        self.bayes_fingerprint.copy_(self.weights_fingerprint())
        self.forget_verified()

    def set_fusion(self, coef):
        """Store fitted fusion coefficients (a, b, c) and the fingerprint of the weights."""
        if self.pos_map != "fusion":
            raise ValueError("set_fusion needs pos_map='fusion'")
        coef = torch.as_tensor(coef, dtype=torch.float64).reshape(-1)
        if coef.numel() != 3 or not torch.isfinite(coef).all():
            raise ValueError(f"fusion coefficients must be 3 finite numbers, got {coef.tolist()}")
        self.fusion_coef.copy_(coef)
        self.fusion_fingerprint.copy_(self.weights_fingerprint())
        self.forget_verified()

    def fusion_probability(self, score: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """sigmoid(a·logit(s) + b·logit(max softmax) + c) per pixel, (1, H, W)."""
        self.verify_fingerprint_once(self._verify_fingerprint)
        a, b, c = self.fusion_coef.to(seg.device).tolist()
        max_softmax = seg.float().softmax(dim=0).amax(dim=0, keepdim=True)
        return torch.sigmoid(a * logit(score) + b * logit(max_softmax) + c).to(score.dtype)

    def postprocess_result(self, seg_logits, data_samples=None):
        data_samples = super().postprocess_result(seg_logits, data_samples)
        fusion = self.pos_map == "fusion" and self.calibrated
        calibrator = self.calibrator() if self.calibrated and not fusion else None
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
            elif fusion:
                fields["pred_confidence"] = PixelData(data=self.fusion_probability(score, seg))
            if self.pixel_calibration is not None and not self._pixel_calibration_bypassed:
                if not self.calibrated:
                    raise RuntimeError(
                        "pixel_calibration needs the probability of success fitted first "
                        "(tools/fit_calibration.py without pixel_calibration)"
                    )
                pos = fields["pred_confidence"].data[0]
                fields["seg_logits"] = PixelData(data=self.calibrate_seg_logits(seg, pos))
            sample.set_data(fields)
            self.mark_calibrated(sample)
        return data_samples
