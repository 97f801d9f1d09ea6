"""Fit a score calibrator of our ROI heads, and its operating thresholds, on a held-out split.

:class:`HeldOutDetections` is the calibration evaluator that, beside its metrics (the
uncalibrated model on the held-out split), streams what a calibrator fits on: a uniform
sample of (class logits or score, class, target) for temperature / Platt / linear, per
(class, score bin) counts of hits and IoUs for histogram binning and isotonic regression,
and the detections themselves for the thresholds. :func:`fit_score_calibrator` runs the
model over the split with detectron2's ``inference_on_dataset``, fits, attaches and seals
the calibrator in the model's ROI heads, then chooses the per-class LRP-optimal operating
thresholds on the *calibrated* detections of the same split (the stored detections
re-scored for maps applied after NMS, a second inference pass for temperature, which changes
what survives the score threshold and NMS) and reports the held-out metrics of the detections
kept at them, for choices made on that split (``tools/fit_detection_calibration.py``). As
a map fitted on a split scores (nearly) perfectly on that same split, the maps with per-class
parameters (Platt, linear, histogram, isotonic) are also cross-fitted: fitted on each half of
the held-out images (by a hash of the image id) and applied to the other half, whose metrics
at the thresholds are the criterion to choose among calibrators (``cross_fitted_at_thresholds``).
Box intervals are fitted on the matched calibrated detections kept at the thresholds, the
detections they are reported for.
"""

import logging
import time
import zlib
from types import SimpleNamespace

import torch
from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.evaluation import DatasetEvaluator, inference_on_dataset
from detectron2.structures import Instances

from conf_plugins.calibration.conformal import BoxConformal
from conf_plugins.calibration.detection_matching import match_detection_batch
from conf_plugins.calibration.detection_stats import DetectionBinStats
from conf_plugins.calibration.sampling import UniformSample
from conf_plugins.calibration.score_calibrators import DetectionScoreCalibrator

from .evaluator import DetectionCalibrationEvaluator
from .probability_heads import ProbabilityROIHeads

logger = logging.getLogger(__name__)
MAX_SAMPLED_DETECTIONS = 1_000_000  # uniform sample of the held-out detections
TINY = torch.finfo(torch.float32).tiny  # log(0) of an underflowed probability -> log(TINY)
CROSS_FITTED = ("platt", "linear", "histogram", "isotonic")  # per-class maps, cross-fitted
FOLDS = 2


def image_fold(image_id) -> int:
    """The cross-fitting half of an image: a hash of its id (stable across runs and ranks)."""
    return zlib.crc32(str(image_id).encode()) % FOLDS


class HeldOutDetections(DetectionCalibrationEvaluator):
    """Calibration metrics at ``iou`` plus the streamed fitting data of ``calibrator``,
    (``keep_outputs``) every image's detections and (``box_pairs``) the matched (predicted
    box, GT box, class, pred_box_std) pairs of the box intervals. Runs in one process (the
    fit is cheap beside the inference)."""

    def __init__(
        self,
        dataset_name,
        calibrator: DetectionScoreCalibrator,
        iou: float,
        seed=0,
        keep_outputs=False,
        box_pairs=False,
    ):
        self.calibrator, self._seed, self._keep_outputs = calibrator, seed, keep_outputs
        self._box_pairs = box_pairs
        super().__init__(dataset_name, (iou,), distributed=False, bootstrap=0)

    def reset(self):
        super().reset()
        self.sample = UniformSample(MAX_SAMPLED_DETECTIONS, self._seed)
        self.counts = DetectionBinStats(self.calibrator.num_classes, (self.calibrator.stats_bins(),))
        self.folds = [
            SimpleNamespace(
                sample=UniformSample(MAX_SAMPLED_DETECTIONS, self._seed + 1 + f),
                counts=DetectionBinStats(self.calibrator.num_classes, (self.calibrator.stats_bins(),)),
            )
            for f in range(FOLDS)
        ]
        self.outputs = []
        self.pairs = []  # (pred boxes, GT boxes, classes, box std or None) per matched batch
        self._box_std = {}

    def process(self, inputs, outputs):
        if self._box_pairs:
            for inp, out in zip(inputs, outputs):
                inst = out["instances"]
                self._box_std[inp["image_id"]] = inst.pred_box_std.cpu() if inst.has("pred_box_std") else None
        super().process(inputs, outputs)
        if self._keep_outputs:
            self.outputs += [_detections(inp, out) for inp, out in zip(inputs, outputs)]

    def _add_matched(self, images, mode):
        if not self._box_pairs or mode:
            return super()._add_matched(images, mode)
        matches = match_detection_batch(images, self._iou_thresholds, return_gt_index=True)
        self._accumulate(images, mode, [m[:3] for m in matches])
        for im, (correct, _, _, gt_index) in zip(images, matches):
            hit = correct[0]
            std = self._box_std.pop(im["image_id"], None)
            self.pairs.append(
                (
                    im["det_boxes"][hit].double(),
                    im["gt_boxes"][gt_index[0][hit]].double(),
                    im["det_classes"][hit].long(),
                    None if std is None else std[hit].double(),
                )
            )

    def matched_pairs(self) -> tuple:
        """(pred (N, 4), GT (N, 4), classes (N,), box std (N, 4) or None) of every match."""
        if not self.pairs:
            return torch.zeros(0, 4), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), None
        pred, gt, classes, std = zip(*self.pairs)
        std = None if any(s is None for s in std) else torch.cat(std)
        return torch.cat(pred), torch.cat(gt), torch.cat(classes), std

    def _accumulate(self, images, mode, matches):
        super()._accumulate(images, mode, matches)
        if mode:
            return
        kept = ~torch.cat([ignored[0] for _, ignored, _ in matches])
        correct = torch.cat([c[0] for c, _, _ in matches])[kept]
        iou = torch.cat([m[0] for _, _, m in matches])[kept]
        classes = torch.cat([im["det_classes"] for im in images]).long()[kept]
        scores = torch.cat([im["det_scores"] for im in images])[kept]
        target = correct.double() if self.calibrator.target == "hit" else iou.double()
        method = self.calibrator.method
        if method == "temperature":
            probs = torch.cat([im["det_probs"] for im in images])[kept]
            self.sample.add(probs.double().clamp_min(TINY).log(), classes, target)
            return
        fold = torch.cat(
            [torch.full((len(im["det_classes"]),), image_fold(im["image_id"])) for im in images]
        )[kept]
        for into, rows in [(self, slice(None))] + [(self.folds[f], fold == f) for f in range(FOLDS)]:
            if method in ("platt", "linear"):
                into.sample.add(scores.double()[rows, None], classes[rows], target[rows])
            elif method in ("histogram", "isotonic"):
                into.counts.update(scores[rows], correct[rows], classes[rows], iou[rows])


def _fit(calibrator, collector, dataset_name) -> tuple:
    """Fit ``calibrator`` on what ``collector`` streamed: (detections used, fitted summary)."""
    method = calibrator.method
    if method in ("temperature", "platt", "linear"):
        if collector.sample.seen == 0:
            raise ValueError(f"no detections on '{dataset_name}' to fit the {method} on")
        classes, target = collector.sample.columns
        if method == "temperature":
            calibrator.fit_temperature(collector.sample.values, classes, target)
            return collector.sample.seen, {"temperature": calibrator.temperature, "sampled": len(classes)}
        calibrator.fit_sample(collector.sample.values[:, 0], classes, target)
        return collector.sample.seen, {"params": calibrator.params.tolist(), "sampled": len(classes)}
    if method == "identity":
        return int(collector._stats[""][0].count), {}
    if collector.counts.state[0].sum() == 0:
        raise ValueError(f"no detections on '{dataset_name}' to fit the {method} on")
    calibrator.fit_counts(collector.counts)
    fitted = (
        {"bin_values": calibrator.bin_values.tolist()}
        if method == "histogram"
        else {"knots_per_class": (~calibrator.knot_x.isnan()).sum(1).tolist()}
    )
    return int(collector.counts.state[0].sum()), fitted


def _detections(inp, out) -> tuple:
    """(input id, boxes / scores / classes (/ box std) on the CPU) of one image's output."""
    inst = out["instances"].to("cpu")
    kept = Instances(inst.image_size, pred_boxes=inst.pred_boxes, scores=inst.scores)
    kept.pred_classes = inst.pred_classes
    if inst.has("pred_box_std"):
        kept.pred_box_std = inst.pred_box_std
    return {"image_id": inp["image_id"]}, kept


def _cross_fitted(calibrator, collector, outputs, dataset_name, iou, bins, keep) -> dict:
    """Metrics at the thresholds of every held-out detection re-scored by the same map fitted
    on the other half of the images (empty when a half has nothing to fit on)."""
    halves = []
    for fold in collector.folds:
        half = DetectionScoreCalibrator(
            calibrator.method,
            calibrator.num_classes,
            calibrator.num_bins,
            calibrator.isotonic_bins,
            calibrator.target,
            calibrator.classwise,
        )
        try:
            _fit(half, fold, dataset_name)
        except ValueError as error:
            logger.info("no cross-fitted metrics: %s", error)
            return {}
        halves.append(half)
    rescored = [
        (inp, _rescored(inst, halves[(image_fold(inp["image_id"]) + 1) % FOLDS])) for inp, inst in outputs
    ]
    return _evaluated(rescored, dataset_name, iou, bins, keep).results.get("calibration", {})


def _kept_matched_pairs(outputs, dataset_name, iou, keep) -> tuple:
    """The matched (pred, GT, class, box std) pairs among the detections ``keep`` selects."""
    pairs = HeldOutDetections(dataset_name, DetectionScoreCalibrator("identity", 1), iou, box_pairs=True)
    pairs.reset()
    for inp, inst in outputs:
        pairs.process([inp], [{"instances": inst[keep(inst)]}])
    pairs.evaluate()
    return pairs.matched_pairs()


class _Outputs(DatasetEvaluator):
    """Keeps every image's detections (boxes, scores, classes), nothing else."""

    def reset(self):
        self.outputs = []

    def process(self, inputs, outputs):
        self.outputs += [_detections(inp, out) for inp, out in zip(inputs, outputs)]

    def evaluate(self):
        return {}


def _calibrated_outputs(cfg, model, calibrator, collector, dataset_name) -> list:
    """(input, detections) of every held-out image as the calibrated model outputs them: the
    stored detections re-scored for maps after NMS, a second pass for temperature (its
    scaled logits change what survives the score threshold and NMS)."""
    if calibrator.method == "temperature":
        outputs = _Outputs()
        inference_on_dataset(model, build_detection_test_loader(cfg, dataset_name), outputs)
        return outputs.outputs
    return [(inp, _rescored(inst, calibrator)) for inp, inst in collector.outputs]


def _rescored(inst, calibrator) -> Instances:
    """A copy of stored detections (boxes, classes, any box std) with calibrated scores."""
    out = Instances(inst.image_size, pred_boxes=inst.pred_boxes, pred_classes=inst.pred_classes)
    if inst.has("pred_box_std"):
        out.pred_box_std = inst.pred_box_std
    out.scores = calibrator.calibrate_scores(inst.scores, inst.pred_classes)
    return out


def _evaluated(outputs, dataset_name, iou, bins, keep=None) -> DetectionCalibrationEvaluator:
    """An evaluator (IoU ``iou``, no bootstrap) that has evaluated ``outputs`` (only the
    detections ``keep(instances)`` selects, when given)."""
    evaluator = DetectionCalibrationEvaluator(
        dataset_name, (iou,), distributed=False, allow_empty=keep is not None, bootstrap=0, lrp_bins=bins
    )
    evaluator.reset()
    for inp, inst in outputs:
        evaluator.process([inp], [{"instances": inst if keep is None else inst[keep(inst)]}])
    evaluator.results = evaluator.evaluate()
    return evaluator


def fit_score_calibrator(cfg, model, dataset_name: str, method: str, box_conformal=None) -> dict:
    """Fit ``method`` on ``dataset_name`` for ``model`` (our ROI heads, uncalibrated, with
    ``pred_class_probs``), choose the operating thresholds, attach and seal it; with
    ``box_conformal`` (a ``MODEL.ROI_HEADS.BOX_CONFORMAL`` node whose SCORE is set; the
    model built without it) also the conformal box intervals on the matched detections.
    Returns a summary: the held-out detections used, what was fitted, the thresholds (and
    which classes got the pooled one), the uncalibrated metrics on that split, the time."""
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
    calibrator = DetectionScoreCalibrator(
        method, heads.num_classes, sc.NUM_BINS, sc.ISOTONIC_BINS, sc.TARGET, sc.CLASSWISE
    )
    if heads.box_conformal is not None:
        raise ValueError("fit on the model without box intervals (BOX_CONFORMAL.SCORE '')")
    intervals = None
    if box_conformal is not None and box_conformal.SCORE:
        intervals = BoxConformal(
            heads.num_classes,
            box_conformal.SCORE,
            box_conformal.CORRECTION,
            box_conformal.ALPHA,
            box_conformal.CLASSWISE,
        )
    collector = HeldOutDetections(
        dataset_name,
        calibrator,
        sc.IOU,
        keep_outputs=method != "temperature",
    )
    start = time.perf_counter()
    before = inference_on_dataset(model, build_detection_test_loader(cfg, dataset_name), collector)
    inference_seconds = time.perf_counter() - start
    detections, fitted = _fit(calibrator, collector, dataset_name)
    heads.attach_score_calibrator(calibrator)
    heads.seal_score_calibrator()  # sealed for the second pass of temperature
    calibrated = _calibrated_outputs(cfg, model, calibrator, collector, dataset_name)
    lrp = _evaluated(calibrated, dataset_name, sc.IOU, sc.THRESHOLD_BINS).lrp_stats()[0]
    thresholds, pooled = lrp.operating_thresholds(sc.THRESHOLD_MIN_DETECTIONS)
    names = MetadataCatalog.get(dataset_name).get("thing_classes", None) or [
        str(c) for c in range(heads.num_classes)
    ]
    calibrator.set_thresholds(thresholds)
    heads.seal_score_calibrator()
    kept = lambda i: calibrator.keep(i.scores, i.pred_classes)  # noqa: E731
    at_thresholds = _evaluated(calibrated, dataset_name, sc.IOU, sc.THRESHOLD_BINS, kept).results.get(
        "calibration", {}
    )
    cross_fitted = (
        _cross_fitted(calibrator, collector, collector.outputs, dataset_name, sc.IOU, sc.THRESHOLD_BINS, kept)
        if method in CROSS_FITTED
        else {}
    )
    fitted_intervals = {}
    if intervals is not None:
        pred, gt, classes, std = _kept_matched_pairs(calibrated, dataset_name, sc.IOU, kept)
        intervals.fit(pred, gt, classes, std)
        heads.attach_box_conformal(intervals)
        heads.seal_box_conformal()
        fitted_intervals = {
            "box_conformal": {
                "score": intervals.score,
                "correction": intervals.correction,
                "alpha": intervals.alpha,
                "classwise": intervals.classwise,
                "matched_pairs": int(pred.shape[0]),
                "pooled_classes": [names[c] for c in intervals.pooled.nonzero()[:, 0].tolist()],
                "quantiles": intervals.quantiles[: heads.num_classes].tolist(),
            }
        }
    if pooled.any():
        logger.info(
            "pooled operating threshold %.3f for %s (fewer than %d held-out detections or no GT)",
            float(thresholds[pooled][0]),
            [names[c] for c in pooled.nonzero()[:, 0].tolist()],
            sc.THRESHOLD_MIN_DETECTIONS,
        )
    return {
        "method": method,
        "target": sc.TARGET,
        "classwise": sc.CLASSWISE,
        "dataset": dataset_name,
        "iou": sc.IOU,
        "detections": detections,
        **fitted,
        "thresholds": {
            name: {"threshold": float(t), "pooled": bool(p)} for name, t, p in zip(names, thresholds, pooled)
        },
        "threshold_rule": (
            f"LRP-optimal per class (τ = {sc.IOU}) on the calibrated held-out detections, candidates "
            f"every 1/{sc.THRESHOLD_BINS}; the pooled optimum for a class with fewer than "
            f"{sc.THRESHOLD_MIN_DETECTIONS} held-out detections or no GT"
        ),
        "calibrated_oLRP": lrp.compute()["oLRP"],
        "held_out_at_thresholds": at_thresholds,
        "cross_fitted_at_thresholds": cross_fitted,
        **fitted_intervals,
        "seconds": {"inference": inference_seconds, "total": time.perf_counter() - start},
        "uncalibrated": before.get("calibration", {}),
    }
