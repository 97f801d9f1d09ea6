"""detectron2 evaluator for the calibration of detection scores (DDN paper §V, Fig. 4)."""

import json
import logging
import math
import os

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode
from detectron2.utils import comm

from conf_plugins.calibration import CalibrationStats
from conf_plugins.calibration.bootstrap import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    bootstrap_intervals,
    check_bootstrap_args,
    sparse_rows,
)
from conf_plugins.calibration.class_sets import ClassSetStats
from conf_plugins.calibration.conformal import IntervalStats
from conf_plugins.calibration.detection_matching import mask_iou, match_class_agnostic, match_detection_batch
from conf_plugins.calibration.detection_stats import DetectionBinStats, detection_record_metrics
from conf_plugins.calibration.lrp import DEFAULT_LRP_BINS, LRPStats
from conf_plugins.calibration.lrp import METRIC_NAMES as LRP_METRIC_NAMES
from conf_plugins.calibration.plots import plot_position_map, plot_reliability
from conf_plugins.calibration.stats import DEFAULT_COVERAGE, DEFAULT_RISK, METRIC_NAMES, check_level

from .config import validate_calibration_config

logger = logging.getLogger(__name__)
EXTRA_METRIC_NAMES = ("classwise_ECE", "LaECE", "LaACE", "D-ECE") + LRP_METRIC_NAMES
DEFAULT_LOCALISATION_BINS = 25  # LaECE / LaACE bins, as the code of Kuzucu et al. (ECCV 2024)


def boxes_as_xyxy(annotations) -> torch.Tensor:
    """(N, 4) float64 XYXY_ABS boxes of detectron2 annotation dicts: one conversion per box
    mode present (usually one), not one per box."""
    out = torch.zeros(len(annotations), 4, dtype=torch.float64)
    modes = [a["bbox_mode"] for a in annotations]
    for mode in set(modes):
        rows = [i for i, m in enumerate(modes) if m == mode]
        boxes = torch.tensor([annotations[i]["bbox"] for i in rows], dtype=torch.float64)
        out[rows] = BoxMode.convert(boxes, mode, BoxMode.XYXY_ABS)
    return out


class DetectionCalibrationEvaluator(DatasetEvaluator):
    """Calibration of detection confidences, one set of metrics per IoU threshold.

    A detection is correct when it matches an unmatched same-class, non-crowd GT box with
    IoU >= t (greedy by score, :func:`match_detection_batch`); its confidence is its score;
    one left unmatched that lies on a same-class crowd region is ignored (COCO's rule). Images
    are matched in batches of ``BATCH_IMAGES`` (all IoU thresholds at once). Each
    process accumulates :class:`CalibrationStats` (O(bins) memory); ``evaluate`` sums them
    over processes (all_reduce), so any number of processes gives the same numbers. Results
    come under the ``calibration`` key (beside ``bbox`` of ``COCOEvaluator``) as
    ``{metric}@IoU{t}``; reliability diagrams and D-ECE heat-maps are written to
    ``output_dir``. Beside the metrics of :class:`CalibrationStats`: ``classwise_ECE`` and
    ``D-ECE`` (``num_bins`` confidence bins × box centre bins ``POSITION_BINS``), ``LaECE``
    and ``LaACE`` with the IoU as target (``localisation_bins`` confidence bins; see
    :mod:`conf_plugins.calibration.detection_stats`), and the LRP error with τ = t, at the
    detections as returned (``LRP``) and at each class's LRP-optimal threshold (``oLRP``),
    with components (:mod:`conf_plugins.calibration.lrp`); the per-class thresholds go to
    ``output_dir/calibration/lrp_thresholds.json``. When the detections carry
    ``pred_class_probs`` (``MODEL.ROI_HEADS.OUTPUT_CLASS_PROBS``), the same metrics again as
    ``top1/{metric}@IoU{t}`` over only the detections whose class is the arg-max of their
    proposal's K+1 probabilities (DDN paper eq. 11–12: one prediction per proposal). Box
    intervals (``pred_boxes_inner`` / ``_outer``) add ``box_coverage`` and widths over the
    matched detections; class sets (``pred_class_sets``) add ``class_set_coverage`` and
    ``class_set_size`` over the detections matched to a GT box whatever their class.

    No detection at all is an error, unless ``allow_empty`` (during training: an early model
    may predict nothing yet), where it logs a warning and every metric is NaN, as
    ``COCOEvaluator`` does. A dataset without ground truth (a COCO JSON without
    ``annotations``, e.g. test-dev, or no GT box in any image) is an error when built: every
    detection would count as wrong.
    """

    def __init__(
        self,
        dataset_name: str,
        iou_thresholds=(0.3, 0.5, 0.7),
        num_bins: int = 10,
        output_dir: str = None,
        distributed: bool = True,
        allow_empty: bool = False,
        bootstrap: int = DEFAULT_RESAMPLES,
        bootstrap_seed: int = 0,
        localisation_bins: int = DEFAULT_LOCALISATION_BINS,
        lrp_bins: int = DEFAULT_LRP_BINS,
        coverage: float = DEFAULT_COVERAGE,
        risk: float = DEFAULT_RISK,
        mask_confidence: str = "score",
    ):
        self._dataset_name = dataset_name
        if mask_confidence not in ("score", "mask_quality"):
            raise ValueError(f"mask_confidence must be 'score' or 'mask_quality', got {mask_confidence!r}")
        self._mask_confidence = mask_confidence
        self._coverage, self._risk = check_level(coverage, "coverage"), check_level(risk, "risk")
        self._localisation_bins, self._lrp_bins = int(localisation_bins), int(lrp_bins)
        if self._localisation_bins < 1 or self._lrp_bins < 1:
            raise ValueError(
                f"localisation_bins and lrp_bins must be >= 1, got {localisation_bins}, {lrp_bins}"
            )
        if bootstrap:
            check_bootstrap_args(bootstrap, DEFAULT_LEVEL)  # when built, not after inference
        self._bootstrap, self._bootstrap_seed = int(bootstrap), int(bootstrap_seed)
        if not iou_thresholds or not all(isinstance(t, (int, float)) and 0 < t <= 1 for t in iou_thresholds):
            raise ValueError(f"iou_thresholds must be IoUs in (0, 1], got {iou_thresholds!r}")
        self._iou_thresholds = tuple(float(t) for t in iou_thresholds)
        self._num_bins, _ = CalibrationStats().check_metric_args(num_bins, 0.5)
        self._allow_empty = allow_empty
        self._output_dir = output_dir
        self._distributed = distributed
        self._gt = self.load_ground_truth(dataset_name)
        self._num_classes = len(MetadataCatalog.get(dataset_name).get("thing_classes", [])) or (
            1
            + max((int(e["gt_classes"].max()) for e in self._gt.values() if len(e["gt_classes"])), default=0)
        )
        self.reset()

    @classmethod
    def from_config(cls, cfg, dataset_name, output_dir=None, allow_empty=False):
        thresholds, num_bins = validate_calibration_config(cfg)
        return cls(
            dataset_name,
            thresholds,
            num_bins,
            output_dir,
            allow_empty=allow_empty,
            bootstrap=cfg.TEST.CALIBRATION.BOOTSTRAP,
            bootstrap_seed=cfg.TEST.CALIBRATION.BOOTSTRAP_SEED,
            localisation_bins=cfg.TEST.CALIBRATION.LOCALISATION_BINS,
            lrp_bins=cfg.TEST.CALIBRATION.LRP_BINS,
            coverage=cfg.TEST.CALIBRATION.SELECTIVE_COVERAGE,
            risk=cfg.TEST.CALIBRATION.SELECTIVE_RISK,
            mask_confidence=cfg.TEST.CALIBRATION.MASK_CONFIDENCE,
        )

    @staticmethod
    def load_ground_truth(dataset_name) -> dict:
        """image id -> GT boxes / classes and crowd boxes / classes (XYXY float64) of
        ``dataset_name``; an error when it has no ground truth."""
        gt = {}
        for record in DatasetCatalog.get(dataset_name):
            if "annotations" not in record:
                raise ValueError(
                    f"dataset '{dataset_name}' has no annotations for image "
                    f"{record.get('image_id')}: calibration needs ground truth"
                )
            entry = {}
            for crowd, prefix in ((False, "gt"), (True, "crowd")):
                anns = [a for a in record["annotations"] if bool(a.get("iscrowd", 0)) == crowd]
                entry[f"{prefix}_boxes"] = boxes_as_xyxy(anns)
                entry[f"{prefix}_classes"] = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
                if not crowd:  # instance masks as stored (decoded per image, only for segm/)
                    masks = [a.get("segmentation") for a in anns]
                    entry["gt_segmentation"] = None if any(m is None for m in masks) else masks
            gt[record["image_id"]] = entry
        if gt and not any(len(entry["gt_classes"]) for entry in gt.values()):
            json_file = MetadataCatalog.get(dataset_name).get("json_file")
            if json_file and os.path.isfile(json_file):
                with open(json_file) as f:  # load_coco_json gives [] to every image either way
                    if "annotations" not in json.load(f):
                        raise ValueError(
                            f"dataset '{dataset_name}' has no ground truth: "
                            f"{json_file} holds no 'annotations' (e.g. COCO "
                            "test-dev); calibration needs labelled images"
                        )
            raise ValueError(
                f"dataset '{dataset_name}' has no (non-crowd) ground-truth box in "
                "any image: every detection would count as wrong"
            )
        return gt

    BATCH_IMAGES = 256  # images matched together: bounded memory, few Python steps
    POSITION_BINS = (5, 5)  # D-ECE: bins of the normalised box centre (cx, cy)

    MODES = ("", "top1/", "segm/")  # boxes; top-1 class of each proposal; masks (mask IoU)

    def reset(self):
        thresholds = self._iou_thresholds
        self._stats = {m: [CalibrationStats() for _ in thresholds] for m in self.MODES}
        bins = (self._num_bins,) + self.POSITION_BINS
        self._bin_stats = {
            m: [DetectionBinStats(self._num_classes, bins) for _ in thresholds] for m in self.MODES
        }
        self._la_stats = {
            m: [DetectionBinStats(self._num_classes, (self._localisation_bins,)) for _ in thresholds]
            for m in self.MODES
        }
        self._lrp = {  # LRP's τ is the matching IoU t (< 1)
            m: [LRPStats(self._num_classes, self._lrp_bins, t) if t < 1 else None for t in thresholds]
            for m in self.MODES
        }
        self._intervals = [IntervalStats() for _ in thresholds]  # conformal box intervals
        self._class_sets = [
            ClassSetStats() for _ in thresholds
        ]  # conformal class sets, class-agnostic matches
        self._num_images = 0
        self._pending = []
        self._has_probs = self._has_masks = None
        # per-image records for the bootstrap: image ids in processing order, and per mode and
        # threshold the sparse (images, statistics) rows of each matched batch
        self._image_ids = []
        self._records = {mode: [[] for _ in thresholds] for mode in self.MODES}

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            if inp["image_id"] not in self._gt:
                raise KeyError(f"image {inp['image_id']} is not in dataset '{self._dataset_name}'")
            instances = out["instances"].to("cpu")
            has_probs = instances.has("pred_class_probs")
            if self._has_probs is None:
                self._has_probs = has_probs
            elif has_probs != self._has_probs:
                raise ValueError("some detections carry pred_class_probs and others do not")
            image = dict(
                self._gt[inp["image_id"]],
                image_id=inp["image_id"],
                det_boxes=instances.pred_boxes.tensor,
                det_scores=instances.scores,
                det_classes=instances.pred_classes,
                image_size=instances.image_size,
            )
            if instances.has("pred_boxes_outer"):
                image["det_inner"] = instances.pred_boxes_inner.tensor
                image["det_outer"] = instances.pred_boxes_outer.tensor
            has_masks = instances.has("pred_masks")
            if self._has_masks is None:
                self._has_masks = has_masks
            elif has_masks != self._has_masks:
                raise ValueError("some detections carry pred_masks and others do not")
            if has_masks:
                image["segm_overlap"] = self._mask_overlap(inp["image_id"], instances)
                image["segm_scores"] = self._mask_scores(instances)
            if instances.has("pred_class_sets"):
                image["det_sets"] = instances.pred_class_sets
            if has_probs:
                image["det_probs"] = instances.pred_class_probs
                image["top1"] = instances.pred_classes == instances.pred_class_probs.argmax(dim=1)
            if len(instances) and int(instances.pred_classes.max()) >= self._num_classes:
                raise ValueError(
                    f"predicted class {int(instances.pred_classes.max())} but "
                    f"'{self._dataset_name}' has {self._num_classes} classes"
                )
            self._pending.append(image)
            self._num_images += 1
            if len(self._pending) >= self.BATCH_IMAGES:
                self._match_pending()

    def _match_pending(self):
        """Match the buffered images and add them to the statistics (one update per IoU)."""
        if not self._pending:
            return
        self._image_ids += [im["image_id"] for im in self._pending]
        self._add_matched(self._pending, "")
        if self._has_probs:  # top-1 mode: only each proposal's arg-max class is a detection
            keys = ("det_boxes", "det_scores", "det_classes", "det_probs")
            self._add_matched(
                [{**im, **{k: im[k][im["top1"]] for k in keys}} for im in self._pending], "top1/"
            )
        if self._has_masks:  # the same detections matched by mask IoU
            self._add_matched(
                [
                    {**im, "overlap": im["segm_overlap"], "det_scores": im["segm_scores"]}
                    for im in self._pending
                ],
                "segm/",
            )
        self._pending = []

    def _mask_scores(self, instances) -> torch.Tensor:
        """The confidence of each mask: its score, or score x ``pred_mask_quality``."""
        if self._mask_confidence == "score":
            return instances.scores
        if not instances.has("pred_mask_quality"):
            raise ValueError(
                "TEST.CALIBRATION.MASK_CONFIDENCE mask_quality needs pred_mask_quality: "
                "MODEL.ROI_HEADS.OUTPUT_MASK_QUALITY True with a mask head"
            )
        return (instances.scores * instances.pred_mask_quality).clamp(0, 1)

    def _mask_overlap(self, image_id, instances) -> torch.Tensor:
        """(D, G) mask IoU of the detections' ``pred_masks`` with the image's GT masks."""
        gt = self._gt[image_id]
        if gt.get("gt_segmentation") is None:
            raise ValueError(
                f"the detections carry pred_masks but '{self._dataset_name}' has no instance masks "
                f"('segmentation') for image {image_id}: mask calibration (segm/) needs GT masks"
            )
        from pycocotools import mask as coco_mask

        height, width = instances.image_size
        gt_masks = torch.zeros(len(gt["gt_segmentation"]), height, width, dtype=torch.bool)
        for g, segm in enumerate(gt["gt_segmentation"]):
            if isinstance(segm, list):  # polygons
                segm = coco_mask.merge(coco_mask.frPyObjects(segm, height, width))
            elif isinstance(segm.get("counts"), list):  # uncompressed RLE
                segm = coco_mask.frPyObjects(segm, *segm["size"])
            decoded = torch.from_numpy(coco_mask.decode(segm)).bool()
            if decoded.shape != (height, width):
                raise ValueError(
                    f"image {image_id}: a GT mask of size {tuple(decoded.shape)} for detections "
                    f"of size {(height, width)}"
                )
            gt_masks[g] = decoded
        return mask_iou(instances.pred_masks.bool(), gt_masks)

    def _add_matched(self, images, mode):
        if not mode and any("det_sets" in im for im in images):
            if not all("det_sets" in im for im in images):
                raise ValueError("some detections carry class sets (pred_class_sets) and others do not")
            for im in images:
                for t, stats in zip(self._iou_thresholds, self._class_sets):
                    stats.update(im["det_sets"], *match_class_agnostic(im, t))
        with_intervals = not mode and any("det_outer" in im for im in images)
        matches = match_detection_batch(images, self._iou_thresholds, return_gt_index=with_intervals)
        if with_intervals:
            if not all("det_outer" in im for im in images):
                raise ValueError("some detections carry box intervals (pred_boxes_outer) and others do not")
            for im, (correct, _, _, gt_index) in zip(images, matches):
                for k, stats in enumerate(self._intervals):
                    hit = correct[k]
                    stats.update(im["gt_boxes"][gt_index[k][hit]], im["det_inner"][hit], im["det_outer"][hit])
            matches = [m[:3] for m in matches]
        self._accumulate(images, mode, matches)

    def _accumulate(self, images, mode, matches):
        """Add matched images to the statistics of ``mode`` ("" or "top1/"); ``matches``:
        per image (correct, ignored, iou), each (thresholds, detections)."""
        scores = torch.cat([im["det_scores"] for im in images])
        classes = torch.cat([im["det_classes"] for im in images]).long()
        centres = []
        for im in images:
            height, width = im["image_size"]
            box = im["det_boxes"].double()
            centres.append(
                torch.stack(
                    [(box[:, 0] + box[:, 2]) / (2 * width), (box[:, 1] + box[:, 3]) / (2 * height)], dim=1
                )
            )
        centres = torch.cat(centres).clamp(0, 1)
        image_of = torch.cat(
            [torch.full((len(im["det_scores"]),), i, dtype=torch.long) for i, im in enumerate(images)]
        )
        gt_classes = torch.cat([im["gt_classes"] for im in images]).long()
        gt_image_of = torch.cat(
            [torch.full((len(im["gt_classes"]),), i, dtype=torch.long) for i, im in enumerate(images)]
        )
        for k, (stats, bin_stats) in enumerate(zip(self._stats[mode], self._bin_stats[mode])):
            correct = torch.cat([c[k] for c, _, _ in matches])
            kept = ~torch.cat([i[k] for _, i, _ in matches])  # crowd-ignored: left out
            iou = torch.cat([m[k] for _, _, m in matches])
            stats.update(scores, correct, mask=kept)
            features = (centres[kept, 0], centres[kept, 1])
            detections = (scores[kept], correct[kept], classes[kept], iou[kept])  # crowd-ignored left out
            bin_stats.update(*detections, features=features)
            la_stats, lrp = self._la_stats[mode][k], self._lrp[mode][k]
            la_stats.update(*detections)
            if lrp is not None:
                lrp.update(*detections).add_ground_truth(gt_classes)
            if self._bootstrap:
                n, images_of = len(images), image_of[kept]
                parts = [
                    stats.records_by_group(scores, correct, image_of, n, mask=kept),
                    bin_stats.records_by_image(images_of, n, *detections, features=features),
                    la_stats.records_by_image(images_of, n, *detections),
                ]
                if lrp is not None:
                    parts.append(lrp.records_by_image(images_of, n, *detections, gt_image_of, gt_classes))
                records = torch.cat(parts, dim=1)
                self._records[mode][k].append(records)

    def _reduced_stats(self):
        """The statistics of all processes on the main one (None elsewhere).

        One all_reduce of the O(bins) sufficient statistics per IoU threshold, through
        torch.distributed directly: no pickled gather, and no cached detectron2 process group
        outliving ``destroy_process_group`` (such a group is torn down only at interpreter
        exit, where gloo can abort the process).
        """
        everything = (
            self._stats,
            self._bin_stats,
            self._la_stats,
            self._lrp,
            {"": self._intervals},
            {"": self._class_sets},
        )
        if not self._distributed or comm.get_world_size() == 1:
            return everything

        def reduced(s):  # copies: evaluate() can repeat
            if s is None:
                return None
            if isinstance(s, CalibrationStats):
                return CalibrationStats(s.num_fine_bins).merge(s).all_reduce()
            if isinstance(s, LRPStats):
                return LRPStats(s.num_classes, s.num_bins, s.tp_iou).merge(s).all_reduce()
            if isinstance(s, IntervalStats):
                return IntervalStats().merge(s).all_reduce()
            if isinstance(s, ClassSetStats):
                return ClassSetStats().merge(s).all_reduce()
            return DetectionBinStats(s.num_groups, s.bins).merge(s).all_reduce()

        out = tuple({m: [reduced(s) for s in by_t] for m, by_t in kind.items()} for kind in everything)
        return out if comm.is_main_process() else (None,) * len(everything)

    def lrp_stats(self) -> list:
        """This process's :class:`LRPStats` per IoU threshold (None for t = 1), after
        :meth:`evaluate` (e.g. to choose operating thresholds on a held-out split)."""
        return list(self._lrp[""])

    def metric_fn(self, stats, bin_stats, tp_iou):
        """Summed per-image records (B, S) -> {metric: (B,)} (see detection_record_metrics)."""
        return detection_record_metrics(
            bin_stats.num_groups,
            bin_stats.bins,
            self._num_bins,
            stats.num_fine_bins,
            self._localisation_bins,
            self._lrp_bins if tp_iou < 1 else None,
            tp_iou,
            self._coverage,
            self._risk,
        )

    def _gathered_records(self):
        """``(image ids, {mode: [records per threshold]})`` of every process, rows sorted by
        image id: the same intervals for any number of processes. None without bootstrap, on
        ranks other than the main one, or with fewer than two images."""
        if not self._bootstrap:
            return None
        local = (
            self._image_ids,
            {
                m: [sparse_rows([], [], [], (0, 0)) if not parts else torch.cat(parts) for parts in by_t]
                for m, by_t in self._records.items()
            },
        )
        if self._distributed and comm.get_world_size() > 1:
            import torch.distributed as dist

            everything = [None] * comm.get_world_size()
            dist.all_gather_object(everything, local)
            if not comm.is_main_process():
                return None
        else:
            everything = [local]
        ids = [i for ids, _ in everything for i in ids]
        if len(ids) < 2:
            logger.warning("fewer than two images: no bootstrap intervals")
            return None
        order = sorted(range(len(ids)), key=lambda i: (type(ids[i]).__name__, ids[i]))
        rows = torch.empty(len(ids), dtype=torch.long)
        rows[torch.tensor(order)] = torch.arange(len(ids))  # old row -> sorted row
        out = {}
        for mode in self._records:
            out[mode] = []
            for k in range(len(self._iou_thresholds)):
                parts = [r[mode][k] for _, r in everything if r[mode][k].shape[0]]
                if not parts:
                    out[mode].append(None)
                    continue
                merged = torch.cat(parts)
                index = merged._indices()
                out[mode].append(
                    sparse_rows(
                        rows[index[0]],
                        index[1],
                        merged._values(),
                        (len(ids), merged.shape[1]),
                        coalesce=False,
                    )
                )
        return [ids[i] for i in order], out

    def evaluate(self):
        self._match_pending()
        gathered = self._gathered_records()
        all_stats, all_bin_stats, all_la_stats, all_lrp, all_intervals, all_sets = self._reduced_stats()
        if all_stats is None:
            return {}
        image_ids, records = gathered if gathered is not None else (None, None)
        stats = all_stats[""]
        if stats[0].count == 0:
            message = (
                f"no detections on '{self._dataset_name}': the model predicted nothing "
                "above its score threshold, so calibration is undefined"
            )
            if not self._allow_empty:
                raise ValueError(message)
            logger.warning(message + "; reporting NaN")
            return {
                "calibration": {
                    f"{name}@IoU{t:g}": math.nan
                    for t in self._iou_thresholds
                    for name in METRIC_NAMES + EXTRA_METRIC_NAMES
                }
            }
        thresholds_out = {}
        results = {}
        folder = os.path.join(self._output_dir, "calibration") if self._output_dir else None
        for mode in self.MODES:
            if mode and all_stats[mode][0].count == 0:
                continue  # no pred_class_probs: no top-1 mode; no pred_masks: no segm mode
            for k, (t, s, b) in enumerate(zip(self._iou_thresholds, all_stats[mode], all_bin_stats[mode])):
                key = f"@IoU{t:g}"
                for name, value in s.compute(self._num_bins, 0.5, self._coverage, self._risk).items():
                    results[f"{mode}{name}{key}"] = value
                la, lrp = all_la_stats[mode][k], all_lrp[mode][k]
                results.update(
                    {
                        f"{mode}classwise_ECE{key}": b.classwise_ece(),
                        f"{mode}LaECE{key}": la.laece(),
                        f"{mode}LaACE{key}": la.laace(),
                        f"{mode}D-ECE{key}": b.dece(),
                    }
                )
                if not mode and all_intervals[""][k].state[0] > 0:  # conformal box intervals
                    results.update({f"{n}{key}": v for n, v in all_intervals[""][k].compute().items()})
                if not mode and all_sets[""][k].state[3] > 0:  # conformal class sets
                    results.update({f"{n}{key}": v for n, v in all_sets[""][k].compute().items()})
                if lrp is not None:
                    results.update({f"{mode}{name}{key}": v for name, v in lrp.compute().items()})
                    per_class = lrp.per_class()
                    names = MetadataCatalog.get(self._dataset_name).get("thing_classes", None)
                    thresholds_out[f"{mode}IoU{t:g}"] = {
                        (names[c] if names else str(c)): {
                            "threshold": _finite_or_none(per_class["threshold"][c]),
                            "oLRP": _finite_or_none(per_class["oLRP"][c]),
                            "detections": int(per_class["detections"][c]),
                            "gt": int(per_class["gt"][c]),
                        }
                        for c in range(self._num_classes)
                    }
                if records is not None and records[mode][k] is not None:
                    intervals = bootstrap_intervals(
                        records[mode][k], self.metric_fn(s, b, t), self._bootstrap, seed=self._bootstrap_seed
                    )
                    for name, (lo, hi) in intervals.items():
                        results[f"{mode}{name}{key}_ci_lo"], results[f"{mode}{name}{key}_ci_hi"] = lo, hi
                elif self._bootstrap:  # fewer than two images: no interval
                    extra = (
                        EXTRA_METRIC_NAMES
                        if lrp is not None
                        else EXTRA_METRIC_NAMES[: -len(LRP_METRIC_NAMES)]
                    )
                    for name in [*s.compute(self._num_bins, 0.5, self._coverage, self._risk), *extra]:
                        results[f"{mode}{name}{key}_ci_lo"] = results[f"{mode}{name}{key}_ci_hi"] = math.nan
                if folder:
                    os.makedirs(folder, exist_ok=True)
                    tag, title = mode.replace("/", "_"), f"{self._dataset_name}, {mode}IoU {t:g}"
                    plot_reliability(
                        s,
                        os.path.join(folder, f"{tag}reliability_iou{t:g}.png"),
                        num_bins=self._num_bins,
                        title=title,
                    )
                    plot_position_map(
                        b,
                        os.path.join(folder, f"{tag}dece_map_iou{t:g}.png"),
                        title=f"D-ECE by position, {title}",
                    )
        if folder:  # the statistics themselves, for reports and later merging
            torch.save(
                {t: s.state_dict() for t, s in zip(self._iou_thresholds, stats)},
                os.path.join(folder, "stats.pt"),
            )
            if records is not None:  # per-image records: paired comparisons of two methods
                torch.save(
                    {
                        "images": image_ids,
                        "iou_thresholds": self._iou_thresholds,
                        "num_bins": self._num_bins,
                        "num_fine_bins": stats[0].num_fine_bins,
                        "num_classes": self._num_classes,
                        "bins": all_bin_stats[""][0].bins,
                        "localisation_bins": self._localisation_bins,
                        "lrp_bins": self._lrp_bins,
                        "records": records,
                    },
                    os.path.join(folder, "records.pt"),
                )
            torch.save(
                {
                    m: {t: b.state_dict() for t, b in zip(self._iou_thresholds, bins)}
                    for m, bins in all_bin_stats.items()
                },
                os.path.join(folder, "bin_stats.pt"),
            )
        if folder and thresholds_out:
            with open(os.path.join(folder, "lrp_thresholds.json"), "w") as f:
                json.dump(thresholds_out, f, indent=1)
        logger.info(
            "Calibration of %s: %s",
            self._dataset_name,
            {k: round(v, 4) for k, v in results.items() if k.startswith(("ECE", "MSCE"))},
        )
        return {"calibration": results}


def _finite_or_none(value):
    return float(value) if math.isfinite(value) else None
