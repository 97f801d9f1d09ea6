"""Fit the calibration stage of a detector (score calibrator, operating thresholds, box
intervals) on a held-out split.

:class:`HeldOutDetections` is the calibration evaluator that, beside its metrics (the
uncalibrated model on the held-out split), streams what a calibrator fits on: a uniform
sample of (class log-probabilities, or the logits (logit(s), 0) of a sigmoid score, class,
target) for temperature, of (score, class, target) for Platt / linear, per (class, score
bin) counts of hits and IoUs for histogram binning and isotonic regression, and the
detections themselves (post-processed: output coordinates) for the thresholds.
:func:`fit_calibration_stage` runs the model over the split with detectron2's
``inference_on_dataset``, fits, attaches and seals the stage
(:mod:`conf_plugins.detectron2.calibration_stage`), then chooses the per-class LRP-optimal
operating thresholds on the *calibrated* detections of the same split (the stored detections
re-scored, as the stage re-scores them after post-processing) and reports the held-out
metrics of the detections kept at them, for choices made on that split
(``tools/fit_detection_calibration.py``). As
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
from detectron2.evaluation import inference_on_dataset
from detectron2.structures import Instances

from conf_plugins.calibration.detection_matching import match_class_agnostic, match_detection_batch
from conf_plugins.calibration.detection_stats import DetectionBinStats
from conf_plugins.calibration.logistic import logit
from conf_plugins.calibration.sampling import UniformSample
from conf_plugins.calibration.score_calibrators import DetectionScoreCalibrator

from .calibration_stage import (
    STAGE,
    attach_calibration_stage,
    calibrated_scores,
    check_supported,
    missing_class_probabilities,
    stage_from_config,
)
from .evaluator import DetectionCalibrationEvaluator

logger = logging.getLogger(__name__)
MAX_SAMPLED_DETECTIONS = 1_000_000  # uniform sample of the held-out detections
TINY = torch.finfo(torch.float32).tiny  # log(0) of an underflowed probability -> log(TINY)
CROSS_FITTED = ("platt", "linear", "histogram", "isotonic")  # per-class maps, cross-fitted
FOLDS = 2


def image_fold(image_id) -> int:
    """The cross-fitting half of an image: a hash of its id (stable across runs and ranks)."""
    return zlib.crc32(str(image_id).encode()) % FOLDS


class HeldOutDetections(DetectionCalibrationEvaluator):
    """Calibration metrics at ``iou`` plus the streamed fitting data of ``calibrator`` (whose
    model's scores are of ``kind`` 'softmax' or 'sigmoid'), (``keep_outputs``) every image's
    detections and (``box_pairs``) the matched (predicted box, GT box, class, pred_box_std)
    pairs of the box intervals. Runs in one process (the fit is cheap beside the inference)."""

    def __init__(
        self,
        dataset_name,
        calibrator: DetectionScoreCalibrator,
        iou: float,
        kind: str = "softmax",
        seed=0,
        keep_outputs=False,
        box_pairs=False,
    ):
        self.calibrator, self._kind, self._seed, self._keep_outputs = calibrator, kind, seed, keep_outputs
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

    def _temperature_logits(self, images, kept, classes):
        """(logits (N, L), their class (N,)) the temperature fits: the K+1 log-probabilities
        of ROI heads, or (logit(s), 0) of a sigmoid score (class 0 of the two)."""
        if all("det_probs" in im for im in images):
            probs = torch.cat([im["det_probs"] for im in images])[kept]
            return probs.double().clamp_min(TINY).log(), classes
        if self._kind != "sigmoid":
            raise ValueError(missing_class_probabilities("temperature scaling of ROI heads"))
        scores = torch.cat([im["det_scores"] for im in images])[kept].double()
        z = logit(scores)
        return torch.stack([z, torch.zeros_like(z)], dim=1), torch.zeros_like(classes)

    @property
    def fit_mode(self) -> str:
        """The evaluator mode whose matches the calibrator fits on: mask matches (``segm/``)
        for the mask-IoU target, box matches otherwise."""
        return "segm/" if self.calibrator.target == "mask_iou" else ""

    def _accumulate(self, images, mode, matches):
        super()._accumulate(images, mode, matches)
        if mode != self.fit_mode:
            return
        kept = ~torch.cat([ignored[0] for _, ignored, _ in matches])
        correct = torch.cat([c[0] for c, _, _ in matches])[kept]
        iou = torch.cat([m[0] for _, _, m in matches])[kept]
        classes = torch.cat([im["det_classes"] for im in images]).long()[kept]
        scores = torch.cat([im["det_scores"] for im in images])[kept]
        target = correct.double() if self.calibrator.target == "hit" else iou.double()
        method = self.calibrator.method
        if method == "temperature":
            self.sample.add(*self._temperature_logits(images, kept, classes), target)
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
    """(input id, boxes / scores / classes (/ class probabilities, box std) on the CPU) of
    one image's (post-processed) output."""
    inst = out["instances"].to("cpu")
    kept = Instances(inst.image_size, pred_boxes=inst.pred_boxes, scores=inst.scores)
    kept.pred_classes = inst.pred_classes
    for name in ("pred_class_probs", "pred_box_std"):
        if inst.has(name):
            kept.set(name, inst.get(name))
    return {"image_id": inp["image_id"]}, kept


def _cross_fitted(calibrator, collector, kind, dataset_name, iou, bins, keep) -> dict:
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
        (inp, _rescored(inst, halves[(image_fold(inp["image_id"]) + 1) % FOLDS], kind))
        for inp, inst in collector.outputs
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


def _class_agnostic_pairs(outputs, dataset_name, iou, keep) -> tuple:
    """(class probabilities (N, K+1), GT class (N,)) of the detections ``keep`` selects that
    match a GT box at ``iou`` whatever their class (what class sets are fitted on)."""
    ground_truth = DetectionCalibrationEvaluator.load_ground_truth(dataset_name)
    probs, labels = [], []
    for inp, inst in outputs:
        inst = inst[keep(inst)]
        if not inst.has("pred_class_probs"):
            raise ValueError(missing_class_probabilities("conformal class sets"))
        image = dict(
            ground_truth[inp["image_id"]],
            det_boxes=inst.pred_boxes.tensor,
            det_scores=inst.scores,
            det_classes=inst.pred_classes,
        )
        matched, gt_class = match_class_agnostic(image, iou)
        probs.append(inst.pred_class_probs[matched].double())
        labels.append(gt_class[matched])
    return torch.cat(probs), torch.cat(labels)


def _rescored(inst, calibrator, kind) -> Instances:
    """A copy of stored detections (boxes, classes, any box std) with calibrated scores, as
    the stage scores them (:func:`~conf_plugins.detectron2.calibration_stage.calibrated_scores`)."""
    out = Instances(inst.image_size, pred_boxes=inst.pred_boxes, pred_classes=inst.pred_classes)
    if inst.has("pred_box_std"):
        out.pred_box_std = inst.pred_box_std
    out.scores, probs = calibrated_scores(calibrator, inst, kind)
    if probs is not None:
        out.pred_class_probs = probs
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


def fit_calibration_stage(cfg, model, dataset_name: str) -> dict:
    """Fit the stage that ``cfg.MODEL.CALIBRATION`` describes (METHOD set; box intervals when
    BOX_CONFORMAL.SCORE is set) on ``dataset_name`` for ``model`` (any supported detector,
    uncalibrated: its stage, if any, holds nothing fitted), choose the operating thresholds,
    attach and seal it. Returns a summary: the held-out detections used, what was fitted, the
    thresholds (and which classes got the pooled one), the uncalibrated metrics on that split,
    the time."""
    check_supported(model)
    current = getattr(model, STAGE, None)
    if current is not None and current.fitted_parts:
        raise ValueError(
            "fit on the uncalibrated model, built without MODEL.CALIBRATION.METHOD, BOX_CONFORMAL.SCORE "
            "or CLASS_SETS (the fit's own settings); this one already carries a calibration"
        )
    sc = cfg.MODEL.CALIBRATION
    stage = stage_from_config(cfg, model)
    calibrator, intervals, class_sets = stage.calibrator, stage.box_conformal, stage.class_sets
    if calibrator is None:
        raise ValueError("MODEL.CALIBRATION.METHOD is '': set the method to fit (e.g. isotonic)")
    stage.operating_thresholds = False  # chosen below; applied when deployed
    collector = HeldOutDetections(dataset_name, calibrator, sc.IOU, stage.kind, keep_outputs=True)
    start = time.perf_counter()
    before = inference_on_dataset(model, build_detection_test_loader(cfg, dataset_name), collector)
    inference_seconds = time.perf_counter() - start
    if calibrator.target == "mask_iou" and not collector._has_masks:
        raise ValueError(
            "MODEL.CALIBRATION.TARGET mask_iou fits the score to the mask IoU: it needs a model that "
            "outputs pred_masks (Mask R-CNN) and a held-out split with instance masks"
        )
    detections, fitted = _fit(calibrator, collector, dataset_name)
    calibrated = [(inp, _rescored(inst, calibrator, stage.kind)) for inp, inst in collector.outputs]
    lrp = _evaluated(calibrated, dataset_name, sc.IOU, sc.THRESHOLD_BINS).lrp_stats()[0]
    thresholds, pooled = lrp.operating_thresholds(sc.THRESHOLD_MIN_DETECTIONS)
    num_classes = calibrator.num_classes
    names = MetadataCatalog.get(dataset_name).get("thing_classes", None) or [
        str(c) for c in range(num_classes)
    ]
    calibrator.set_thresholds(thresholds)
    kept = lambda i: calibrator.keep(i.scores, i.pred_classes)  # noqa: E731
    at_thresholds = _evaluated(calibrated, dataset_name, sc.IOU, sc.THRESHOLD_BINS, kept).results.get(
        "calibration", {}
    )
    cross_fitted = (
        _cross_fitted(calibrator, collector, stage.kind, dataset_name, sc.IOU, sc.THRESHOLD_BINS, kept)
        if calibrator.method in CROSS_FITTED
        else {}
    )
    fitted_conformal = {}
    if intervals is not None:
        pred, gt, classes, std = _kept_matched_pairs(calibrated, dataset_name, sc.IOU, kept)
        intervals.fit(pred, gt, classes, std)
        fitted_conformal = {
            "box_conformal": {
                "score": intervals.score,
                "correction": intervals.correction,
                "alpha": intervals.alpha,
                "classwise": intervals.classwise,
                "matched_pairs": int(pred.shape[0]),
                "pooled_classes": [names[c] for c in intervals.pooled.nonzero()[:, 0].tolist()],
                "quantiles": intervals.quantiles[:num_classes].tolist(),
            }
        }
    if class_sets is not None:
        probs, labels = _class_agnostic_pairs(calibrated, dataset_name, sc.IOU, kept)
        class_sets.fit(probs, labels)
        fitted_conformal["class_sets"] = {
            "alpha": class_sets.alpha,
            "matched": int(labels.numel()),
            "pooled_classes": [names[c] for c in class_sets.pooled.nonzero()[:, 0].tolist()],
            "thresholds": class_sets.thresholds.tolist(),
        }
    attach_calibration_stage(model, stage)
    stage.seal(model)
    if pooled.any():
        logger.info(
            "pooled operating threshold %.3f for %s (fewer than %d held-out detections or no GT)",
            float(thresholds[pooled][0]),
            [names[c] for c in pooled.nonzero()[:, 0].tolist()],
            sc.THRESHOLD_MIN_DETECTIONS,
        )
    return {
        "method": calibrator.method,
        "target": sc.TARGET,
        "classwise": sc.CLASSWISE,
        "meta_architecture": type(model).__name__,
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
        **fitted_conformal,
        "seconds": {"inference": inference_seconds, "total": time.perf_counter() - start},
        "uncalibrated": before.get("calibration", {}),
    }
