"""Fit a score calibrator of our ROI heads on a held-out split.

:class:`HeldOutDetections` is the calibration evaluator that, beside its metrics (the
uncalibrated model on the held-out split), streams what a calibrator fits on: a uniform
sample of (class logits, class, correct) for the temperature, per (class, score bin) counts
for histogram binning and isotonic regression. :func:`fit_score_calibrator` runs the
model over the split with detectron2's ``inference_on_dataset``, fits, attaches and seals
the calibrator in the model's ROI heads (``tools/fit_detection_calibration.py``).
"""

import torch
from detectron2.data import build_detection_test_loader
from detectron2.evaluation import inference_on_dataset

from conf_plugins.calibration.detection_stats import DetectionBinStats
from conf_plugins.calibration.sampling import UniformSample
from conf_plugins.calibration.score_calibrators import DetectionScoreCalibrator

from .evaluator import DetectionCalibrationEvaluator
from .probability_heads import ProbabilityROIHeads

MAX_TEMPERATURE_DETECTIONS = 1_000_000  # uniform sample of the held-out detections
TINY = torch.finfo(torch.float32).tiny  # log(0) of an underflowed probability -> log(TINY)


class HeldOutDetections(DetectionCalibrationEvaluator):
    """Calibration metrics at ``iou`` plus the streamed fitting data of ``calibrator``.
    Runs in one process (the fit is cheap beside the inference)."""

    def __init__(
        self,
        dataset_name,
        calibrator: DetectionScoreCalibrator,
        iou: float,
        num_bins: int = 10,
        seed: int = 0,
    ):
        self.calibrator, self._seed = calibrator, seed
        super().__init__(dataset_name, (iou,), num_bins, distributed=False)

    def reset(self):
        super().reset()
        self.sample = UniformSample(MAX_TEMPERATURE_DETECTIONS, self._seed)
        self.counts = DetectionBinStats(self.calibrator.num_classes, (self.calibrator.stats_bins(),))

    def _accumulate(self, images, mode, matches):
        super()._accumulate(images, mode, matches)
        if mode:
            return
        kept = ~torch.cat([ignored[0] for _, ignored, _ in matches])
        correct = torch.cat([c[0] for c, _, _ in matches])[kept]
        classes = torch.cat([im["det_classes"] for im in images]).long()[kept]
        if self.calibrator.method == "temperature":
            probs = torch.cat([im["det_probs"] for im in images])[kept]
            self.sample.add(probs.double().clamp_min(TINY).log(), classes, correct)
        else:
            scores = torch.cat([im["det_scores"] for im in images])[kept]
            self.counts.update(scores, correct, classes)


def fit_score_calibrator(cfg, model, dataset_name: str, method: str) -> dict:
    """Fit ``method`` on ``dataset_name`` for ``model`` (our ROI heads, uncalibrated, with
    ``pred_class_probs``), attach and seal it. Returns a summary: the held-out detections
    used, the fitted temperature / tables and the uncalibrated metrics on that split."""
    heads = model.roi_heads
    if not isinstance(heads, ProbabilityROIHeads):
        raise ValueError(
            f"MODEL.ROI_HEADS.NAME is {type(heads).__name__}: score calibration "
            "needs one of our ROI heads (ProbabilityROIHeads = the stock ones, "
            "MCDropoutROIHeads, DDNROIHeads)"
        )
    if heads.score_calibrator is not None or not heads.output_class_probs:
        raise ValueError("fit on the uncalibrated model with MODEL.ROI_HEADS.OUTPUT_CLASS_PROBS")
    sc = cfg.MODEL.ROI_HEADS.SCORE_CALIBRATION
    calibrator = DetectionScoreCalibrator(method, heads.num_classes, sc.NUM_BINS, sc.ISOTONIC_BINS)
    collector = HeldOutDetections(dataset_name, calibrator, sc.IOU)
    before = inference_on_dataset(model, build_detection_test_loader(cfg, dataset_name), collector)
    if method == "temperature":
        if collector.sample.seen == 0:
            raise ValueError(f"no detections on '{dataset_name}' to fit the temperature on")
        classes, correct = collector.sample.columns
        calibrator.fit_temperature(collector.sample.values, classes, correct)
        detections, fitted = (
            collector.sample.seen,
            {"temperature": calibrator.temperature, "sampled": len(classes)},
        )
    else:
        if collector.counts.state[0].sum() == 0:
            raise ValueError(f"no detections on '{dataset_name}' to fit the {method} on")
        calibrator.fit_counts(collector.counts)
        detections = int(collector.counts.state[0].sum())
        fitted = (
            {"bin_values": calibrator.bin_values.tolist()}
            if method == "histogram"
            else {"knots_per_class": (~calibrator.knot_x.isnan()).sum(1).tolist()}
        )
    heads.attach_score_calibrator(calibrator)
    heads.seal_score_calibrator()
    return {
        "method": method,
        "dataset": dataset_name,
        "iou": sc.IOU,
        "detections": detections,
        **fitted,
        "uncalibrated": before.get("calibration", {}),
    }
