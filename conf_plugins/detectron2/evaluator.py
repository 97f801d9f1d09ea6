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
from conf_plugins.calibration.stats import METRIC_NAMES
from conf_plugins.calibration.detection_matching import match_detections
from conf_plugins.calibration.plots import plot_reliability

from .config import validate_calibration_config

logger = logging.getLogger(__name__)


class DetectionCalibrationEvaluator(DatasetEvaluator):
    """Calibration of detection confidences, one set of metrics per IoU threshold.

    A detection is correct when it matches an unmatched same-class, non-crowd GT box with
    IoU >= t (greedy by score, :func:`match_detections`); its confidence is its score. Each
    process accumulates :class:`CalibrationStats` (O(bins) memory); ``evaluate`` sums them
    over processes (all_reduce), so any number of processes gives the same numbers. Results
    come under the ``calibration`` key (beside ``bbox`` of ``COCOEvaluator``) as
    ``{metric}@IoU{t}``; reliability diagrams are written to ``output_dir``.

    No detection at all is an error, unless ``allow_empty`` (during training: an early model
    may predict nothing yet), where it logs a warning and every metric is NaN, as
    ``COCOEvaluator`` does. A dataset without ground truth (a COCO JSON without
    ``annotations``, e.g. test-dev, or no GT box in any image) is an error when built: every
    detection would count as wrong.
    """

    def __init__(self, dataset_name: str, iou_thresholds=(0.3, 0.5, 0.7), num_bins: int = 10,
                 output_dir: str = None, distributed: bool = True, allow_empty: bool = False):
        self._dataset_name = dataset_name
        if not iou_thresholds or not all(
                isinstance(t, (int, float)) and 0 < t <= 1 for t in iou_thresholds):
            raise ValueError(f"iou_thresholds must be IoUs in (0, 1], got {iou_thresholds!r}")
        self._iou_thresholds = tuple(float(t) for t in iou_thresholds)
        self._num_bins, _ = CalibrationStats().check_metric_args(num_bins, 0.5)
        self._allow_empty = allow_empty
        self._output_dir = output_dir
        self._distributed = distributed
        self._gt = self._load_ground_truth(dataset_name)
        self.reset()

    @classmethod
    def from_config(cls, cfg, dataset_name, output_dir=None, allow_empty=False):
        thresholds, num_bins = validate_calibration_config(cfg)
        return cls(dataset_name, thresholds, num_bins, output_dir, allow_empty=allow_empty)

    @staticmethod
    def _load_ground_truth(dataset_name):
        json_file = MetadataCatalog.get(dataset_name).get("json_file")
        if json_file and os.path.isfile(json_file):
            with open(json_file) as f:  # load_coco_json gives [] to every image either way
                if "annotations" not in json.load(f):
                    raise ValueError(f"dataset '{dataset_name}' has no ground truth: {json_file} "
                                     "holds no 'annotations' (e.g. COCO test-dev); calibration "
                                     "needs labelled images")
        gt = {}
        for record in DatasetCatalog.get(dataset_name):
            if "annotations" not in record:
                raise ValueError(f"dataset '{dataset_name}' has no annotations for image "
                                 f"{record.get('image_id')}: calibration needs ground truth")
            anns = [a for a in record["annotations"] if not a.get("iscrowd", 0)]
            boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
            gt[record["image_id"]] = (torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4),
                                      torch.tensor([a["category_id"] for a in anns],
                                                   dtype=torch.int64))
        if gt and not any(len(classes) for _, classes in gt.values()):
            raise ValueError(f"dataset '{dataset_name}' has no (non-crowd) ground-truth box in "
                             "any image: every detection would count as wrong")
        return gt

    def reset(self):
        self._stats = [CalibrationStats() for _ in self._iou_thresholds]
        self._num_images = 0

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            if inp["image_id"] not in self._gt:
                raise KeyError(f"image {inp['image_id']} is not in dataset '{self._dataset_name}'")
            gt_boxes, gt_classes = self._gt[inp["image_id"]]
            instances = out["instances"].to("cpu")
            correct = match_detections(instances.pred_boxes.tensor, instances.scores,
                                       instances.pred_classes, gt_boxes, gt_classes,
                                       self._iou_thresholds)
            for stats, correct_at_t in zip(self._stats, correct):
                stats.update(instances.scores, correct_at_t)
            self._num_images += 1

    def _reduced_stats(self):
        """The statistics of all processes on the main one (None elsewhere).

        One all_reduce of the O(bins) sufficient statistics per IoU threshold, through
        torch.distributed directly: no pickled gather, and no cached detectron2 process group
        outliving ``destroy_process_group`` (such a group is torn down only at interpreter
        exit, where gloo can abort the process).
        """
        if not self._distributed or comm.get_world_size() == 1:
            return self._stats
        reduced = [CalibrationStats(s.num_fine_bins).merge(s).all_reduce() for s in self._stats]
        return reduced if comm.is_main_process() else None  # copies: evaluate() can repeat

    def evaluate(self):
        stats = self._reduced_stats()
        if stats is None:
            return {}
        if stats[0].count == 0:
            message = (f"no detections on '{self._dataset_name}': the model predicted nothing "
                       "above its score threshold, so calibration is undefined")
            if not self._allow_empty:
                raise ValueError(message)
            logger.warning(message + "; reporting NaN")
            return {"calibration": {f"{name}@IoU{t:g}": math.nan for t in self._iou_thresholds
                                    for name in METRIC_NAMES}}
        results = {}
        for t, s in zip(self._iou_thresholds, stats):
            for name, value in s.compute(num_bins=self._num_bins).items():
                results[f"{name}@IoU{t:g}"] = value
            if self._output_dir:
                folder = os.path.join(self._output_dir, "calibration")
                os.makedirs(folder, exist_ok=True)
                plot_reliability(s, os.path.join(folder, f"reliability_iou{t:g}.png"),
                                 num_bins=self._num_bins, title=f"{self._dataset_name}, IoU {t:g}")
        if self._output_dir:  # the statistics themselves, for reports and later merging
            torch.save({t: s.state_dict() for t, s in zip(self._iou_thresholds, stats)},
                       os.path.join(self._output_dir, "calibration", "stats.pt"))
        logger.info("Calibration of %s: %s", self._dataset_name,
                    {k: round(v, 4) for k, v in results.items() if k.startswith(("ECE", "MSCE"))})
        return {"calibration": results}
