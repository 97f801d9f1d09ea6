"""mmengine metric for the per-pixel calibration of segmentation confidence maps."""

import math
import os

import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmseg.registry import METRICS

from conf_plugins.calibration import CalibrationStats
from conf_plugins.calibration.bootstrap import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    bootstrap_intervals,
    check_bootstrap_args,
    percentile_interval,
    resample_counts,
)
from conf_plugins.calibration.detection_stats import DetectionBinStats, DetectionRecordMetrics
from conf_plugins.calibration.pixel_confidence import max_softmax_statistics, pixel_confidence
from conf_plugins.calibration.plots import plot_reliability
from conf_plugins.calibration.ranking import image_level_aurc
from conf_plugins.calibration.risk_control import abstention, selective_losses, threshold_index
from conf_plugins.calibration.stats import (
    DEFAULT_COVERAGE,
    DEFAULT_NUM_BINS,
    DEFAULT_RISK,
    StatsRecordMetrics,
    check_level,
)


def auto_confidence(sample) -> str:
    """What ``confidence='auto'`` evaluates for a prediction (dict or SegDataSample): the
    probability of success once fitted, else the raw success score, else max softmax."""
    return next((f for f in ("pred_confidence", "success_score") if f in sample), "max_softmax")


@METRICS.register_module()
class SegCalibrationMetric(BaseMetric):
    """Calibration of a per-pixel confidence map against per-pixel correctness.

    Correct = predicted label equals the ground truth; pixels with ``ignore_index`` are left
    out. The confidence is the max softmax of ``seg_logits`` (divided by ``temperature``:
    the STL-scaled baseline), or any per-pixel map a model puts in its ``SegDataSample``,
    e.g. ``pred_confidence`` (probability of success) or ``success_score``. Reports ECE,
    MSCE, MCE, NLL, Brier, adaptive ECE, success-vs-failure AUROC / AUPR-In / AUPR-Out,
    AURC, AUGRC, risk at coverage / coverage at risk, the success paper's Acc / Precision /
    F0.5 at ``threshold`` (§3.3); ``classwise_ECE`` (mean over predicted classes of the ECE
    of their pixels) when the dataset's classes are known (always under mmseg's runner); and
    ``image_AURC``, the AURC over images ranked by their mean confidence against their pixel
    error rate (ValUES' image-level aggregation).

    Each sample adds one small record, its :class:`CalibrationStats` (O(bins), whatever the
    resolution), so mmengine's gathering across processes — which drops the padded
    duplicates of its distributed sampler — gives the numbers of a single process.

    Args:
        confidence (str): ``'max_softmax'``, the name of a per-pixel field, or ``'auto'``
            (the probability of success once fitted, else the raw success score, else max
            softmax; see :meth:`resolved_confidence`).
        temperature (float): divides the logits before the softmax (max_softmax only).
        ignore_index (int): label of pixels to leave out. Default 255.
        num_bins (int): coarse bins of ECE / MSCE / MCE and the reliability diagram (10, as
            detection's TEST.CALIBRATION.NUM_BINS and Bayes binning).
        num_fine_bins (int): resolution of the sufficient statistics (a multiple of num_bins;
            ranking metrics are exact up to ties within 1/num_fine_bins). Each image's record
            is ~80 bytes per fine bin (120 kB at the default 1500), whatever its size.
        threshold (float): confidence threshold of Acc / Precision / F0.5. Default 0.5.
        output_dir (str | None): where to write the reliability diagram PNG, the merged
            statistics (``stats_{confidence}.pt``) and the per-image records
            (``records_{confidence}.pt``: paired comparisons of two methods, for reports).
        bootstrap (int): resamples of the percentile-bootstrap interval over images of every
            metric (``<metric>_ci_lo`` / ``_ci_hi``; 0 = none). Default 1000.
        bootstrap_level (float): the intervals' level. Default 0.95.
        bootstrap_seed (int): seed of the resampling (the same intervals on every machine and
            number of processes). Default 0.
        coverage (float): ``risk_at_coverage`` is the risk of this share of the most
            confident pixels. Default 0.8.
        risk (float): ``coverage_at_risk`` is the largest share with at most this risk.
            Default 0.05.
        risk_control (str | None): the ``risk_control.json`` of
            ``tools/fit_calibration.py --risk-control``: adds, at its threshold,
            ``selective_risk`` (mean over images of the share of *all* labelled pixels kept
            and wrong, what the threshold controls; not the error among the kept ones) and
            ``abstention`` (mean share abstained), with bootstrap intervals. The file must
            have been fitted for the same confidence, temperature and fine bins (checked).
    """

    default_prefix = "calib"

    def __init__(
        self,
        confidence: str = "max_softmax",
        temperature: float = 1.0,
        ignore_index: int = 255,
        num_bins: int = DEFAULT_NUM_BINS,
        num_fine_bins: int = 1500,
        threshold: float = 0.5,
        output_dir: str = None,
        collect_device: str = "cpu",
        prefix: str = None,
        bootstrap: int = DEFAULT_RESAMPLES,
        bootstrap_level: float = DEFAULT_LEVEL,
        bootstrap_seed: int = 0,
        coverage: float = DEFAULT_COVERAGE,
        risk: float = DEFAULT_RISK,
        risk_control: str = None,
    ):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.risk_control = self._load_risk_control(risk_control, num_fine_bins) if risk_control else None
        self.coverage, self.risk = check_level(coverage, "coverage"), check_level(risk, "risk")
        if not isinstance(confidence, str) or not confidence:
            raise ValueError(
                f"confidence must be 'max_softmax' or the name of a per-pixel field, got {confidence!r}"
            )
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        if temperature != 1 and confidence != "max_softmax":  # 'auto' included
            raise ValueError(
                f"temperature={temperature} applies to confidence='max_softmax' "
                f"only; '{confidence}' is used as it is"
            )
        # bins and threshold are checked now, not after the whole inference
        num_bins, threshold = CalibrationStats(num_fine_bins).check_metric_args(num_bins, threshold)
        self.confidence = confidence
        self._auto = None  # what confidence='auto' resolved to in this run
        self.temperature = temperature
        self.ignore_index = ignore_index
        self.num_bins = num_bins
        self.num_fine_bins = num_fine_bins
        self.threshold = threshold
        self.output_dir = output_dir
        if bootstrap:
            check_bootstrap_args(bootstrap, bootstrap_level)
        self.bootstrap, self.bootstrap_level = int(bootstrap), float(bootstrap_level)
        self.bootstrap_seed = int(bootstrap_seed)

    def resolved_confidence(self, sample: dict) -> str:
        """The map ``confidence`` names; ``'auto'``: ``pred_confidence`` when the predictions
        carry it (a fitted success model), else ``success_score``, else ``max_softmax`` —
        the same choice for every image of a run, logged once."""
        if self.confidence != "auto":
            return self.confidence
        name = auto_confidence(sample)
        if self._auto is None:
            self._auto = name
            print_log(f"SegCalibrationMetric(confidence='auto'): evaluating '{name}'", logger="current")
        elif name != self._auto:
            raise ValueError(
                f"confidence='auto' resolved to '{self._auto}' for earlier images "
                f"but to '{name}' for {sample.get('img_path')}"
            )
        return name

    def confidence_map(self, sample: dict):
        """``((H, W) confidence, argmax of seg_logits or None)`` of one predicted sample; the
        max-softmax path gets the argmax from the same pass (no second one in the check)."""
        confidence = self.resolved_confidence(sample)
        if confidence == "max_softmax":  # class loop, no softmax tensor
            max_softmax, argmax, _, _ = pixel_confidence(
                sample["seg_logits"]["data"].float(), self.temperature
            )
            return max_softmax, argmax
        if confidence not in sample:
            raise KeyError(
                f"the predictions carry no '{confidence}' map (they have "
                f"{sorted(sample)}); for 'pred_confidence' fit Bayes binning first "
                "(tools/fit_calibration.py)"
            )
        return sample[confidence]["data"].float().squeeze(0), None

    @staticmethod
    def check_maps_match_prediction(sample, pred, argmax=None):
        """The maps must come from the pass that made ``pred_sem_seg``: mmseg's stock
        ``SegTTAModel`` replaces the prediction by the merged one but keeps the last
        augmentation's ``seg_logits`` (and other maps)."""
        logits = sample.get("seg_logits", {}).get("data")
        if logits is None or logits.shape[0] < 2:
            return
        if argmax is None:
            argmax = logits.argmax(dim=0)
        differ = int((argmax != pred.to(argmax.device)).sum())
        if differ:
            SegCalibrationMetric.raise_maps_mismatch(sample, differ)

    @staticmethod
    def raise_maps_mismatch(sample, differ: int):
        raise ValueError(
            f"{sample.get('img_path')}: pred_sem_seg is not the argmax of "
            f"seg_logits at {differ} pixels, so the confidence maps do not "
            "belong to the prediction (with test-time augmentation use "
            "tta_model=dict(type='ConfidenceSegTTAModel'))"
        )

    def process(self, data_batch, data_samples):
        for sample in data_samples:
            pred = sample["pred_sem_seg"]["data"].squeeze(0)
            if "gt_sem_seg" not in sample:
                raise ValueError(
                    f"{sample.get('img_path')}: no ground truth (gt_sem_seg); "
                    "calibration needs labelled images (LoadAnnotations in the "
                    "test pipeline)"
                )
            label = sample["gt_sem_seg"]["data"].squeeze(0).to(pred.device)
            stats_and_classwise = self.fused_max_softmax(sample, pred, label) or self.image_statistics(
                sample, pred, label
            )
            self.results.append(self.image_result(sample, *stats_and_classwise))

    def image_statistics(self, sample: dict, pred, label):
        """``(CalibrationStats, class-wise DetectionBinStats or None)`` of one image from its
        confidence map (any confidence, any device)."""
        confidence, argmax = self.confidence_map(sample)
        self.check_maps_match_prediction(sample, pred, argmax)
        confidence = confidence.to(pred.device)
        if not pred.shape == label.shape == confidence.shape:
            raise ValueError(
                f"shape mismatch in {sample.get('img_path')}: prediction "
                f"{tuple(pred.shape)}, label {tuple(label.shape)}, "
                f"confidence {tuple(confidence.shape)}"
            )
        stats = CalibrationStats(self.num_fine_bins)
        valid = label != self.ignore_index
        stats.update(confidence, pred == label, mask=valid)
        classwise, num_classes = None, self.num_classes()
        if num_classes:  # class-wise ECE: per predicted class, coarse bins
            classwise = DetectionBinStats(num_classes, (self.num_bins,))
            kept = valid & (pred >= 0) & (pred < num_classes)
            classwise.update(confidence[kept].clamp(0, 1), (pred == label)[kept], pred[kept])
        return stats, classwise

    def fused_max_softmax(self, sample: dict, pred, label):
        """:meth:`image_statistics` in one pass of the fused kernel when the confidence is the
        max softmax of CPU float32 logits and the kernel is built (else None: same values by
        the general path)."""
        if self.resolved_confidence(sample) != "max_softmax":
            return None
        logits = sample["seg_logits"]["data"]
        if (
            logits.dtype != torch.float32
            or logits.shape[0] < 2
            or not logits.shape[1:] == pred.shape == label.shape
        ):
            return None  # the general path converts, or reports the mismatch
        fused = max_softmax_statistics(
            logits,
            label,
            self.ignore_index,
            self.num_fine_bins,
            self.temperature,
            num_classes=self.num_classes() or 0,
            num_bins=self.num_bins,
            prediction=pred,
        )
        if fused is None:
            return None
        stats, classwise, differ = fused
        if differ:
            self.raise_maps_mismatch(sample, differ)
        return stats, classwise

    @staticmethod
    def image_result(sample: dict, stats, classwise) -> dict:
        """One image's entry of ``self.results`` (what is gathered across processes)."""
        result = {"image": os.path.basename(str(sample.get("img_path", ""))), "stats": stats.state_dict()}
        if classwise is not None:
            result["classwise"] = classwise.state.clone()
        return result

    def compute_metrics(self, results):
        total = CalibrationStats(self.num_fine_bins)
        parts = [CalibrationStats(self.num_fine_bins).load_state_dict(r["stats"]) for r in results]
        for part in parts:
            total.merge(part)
        if total.count == 0:
            raise ValueError("no labelled pixels to evaluate: every pixel is ignore_index")
        metrics = total.compute(self.num_bins, self.threshold, self.coverage, self.risk)
        records = torch.stack([part.as_record() for part in parts])
        classwise = None
        if all("classwise" in r for r in results):
            classwise = torch.stack([r["classwise"].reshape(-1) for r in results])
            merged = DetectionBinStats(self.num_classes(), (self.num_bins,))
            merged.state = classwise.sum(0).view_as(merged.state)
            metrics["classwise_ECE"] = merged.classwise_ece()
        metrics.update(self.image_metrics(parts))
        if self.risk_control is not None:
            metrics.update(self.selective(records))
        metrics.update(self.intervals(records if classwise is None else torch.cat([records, classwise], 1)))
        name, self._auto = self._auto or self.confidence, None  # 'auto' resolves anew per run
        if self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            plot_reliability(
                total,
                os.path.join(self.output_dir, f"reliability_{name}.png"),
                num_bins=self.num_bins,
                title=f"confidence: {name}",
            )
            torch.save(total.state_dict(), os.path.join(self.output_dir, f"stats_{name}.pt"))
            torch.save(
                {
                    "images": [r["image"] for r in results],
                    "records": records,
                    "num_fine_bins": self.num_fine_bins,
                    "num_bins": self.num_bins,
                    "threshold": self.threshold,
                },
                os.path.join(self.output_dir, f"records_{name}.pt"),
            )
        return metrics

    def num_classes(self):
        """The dataset's number of classes, None when unknown (no ``dataset_meta``)."""
        classes = (self.dataset_meta or {}).get("classes")
        return len(classes) if classes else None

    def metric_fn(self, classwise: bool = False):
        """Summed per-image records ``(B, S)`` -> ``{metric: (B,) array}`` (for bootstraps);
        ``classwise``: the records end with the class-wise ECE's statistics."""
        stats = StatsRecordMetrics(
            self.num_fine_bins, self.num_bins, self.threshold, self.coverage, self.risk
        )
        if not classwise:
            return stats
        bins = DetectionBinStats(self.num_classes(), (self.num_bins,))
        return DetectionRecordMetrics([(stats, None), (bins, ("classwise_ECE",))])

    @staticmethod
    def _load_risk_control(path, num_fine_bins) -> dict:
        """The fitted risk control, checked against these settings when built."""
        import json

        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"risk_control: no such file {path!r} (tools/fit_calibration.py --risk-control)"
            )
        with open(path) as f:
            fitted = json.load(f)
        if fitted.get("method") != "conformal_risk_control" or "threshold" not in fitted:
            raise ValueError(f"{path} is not the output of tools/fit_calibration.py --risk-control")
        if fitted.get("num_fine_bins") != num_fine_bins:
            raise ValueError(
                f"{path} was fitted with {fitted.get('num_fine_bins')} fine bins, "
                f"this metric has {num_fine_bins}"
            )
        threshold_index(fitted["threshold"], num_fine_bins)
        return fitted

    def selective(self, records) -> dict:
        """``selective_risk`` / ``abstention`` at the fitted threshold, each a mean over
        images (bootstrap: the same means with resampled image weights); ValueError when
        the fit was for another confidence or temperature."""
        fitted, name = self.risk_control, self._auto or self.confidence
        if fitted.get("confidence") != name or fitted.get("temperature", 1.0) != self.temperature:
            raise ValueError(
                f"the risk control was fitted for confidence '{fitted.get('confidence')}' at temperature "
                f"{fitted.get('temperature', 1.0)}, this metric evaluates '{name}' at {self.temperature}: "
                "its guarantee does not carry over; refit it for this confidence"
            )
        losses, _ = selective_losses(records, self.num_fine_bins)
        j = threshold_index(fitted["threshold"], self.num_fine_bins)
        per_image = {
            "selective_risk": losses[:, j],
            "abstention": abstention(records, self.num_fine_bins, fitted["threshold"]),
        }
        out = {name: float(values.mean()) for name, values in per_image.items()}
        if self.bootstrap and records.shape[0] >= 2:
            weights = resample_counts(records.shape[0], self.bootstrap, self.bootstrap_seed).numpy()
            for name, values in per_image.items():
                lo, hi = percentile_interval(weights @ values / weights.sum(1), self.bootstrap_level)
                out.update({f"{name}_ci_lo": lo, f"{name}_ci_hi": hi})
        return out

    def image_metrics(self, parts) -> dict:
        """``image_AURC`` (and its bootstrap interval): images ranked by mean confidence,
        their risk the share of their labelled pixels predicted wrong."""
        totals = torch.tensor([p.totals() for p in parts], dtype=torch.float64)  # wrong, right, Σ conf
        labelled = totals[:, 0] + totals[:, 1]
        keep = labelled > 0
        if int(keep.sum()) == 0:
            return {}
        confidence = (totals[keep, 2] / labelled[keep]).numpy()
        risk = (totals[keep, 0] / labelled[keep]).numpy()
        out = {"image_AURC": float(image_level_aurc(confidence, risk)[0])}
        if self.bootstrap and int(keep.sum()) >= 2:
            weights = resample_counts(int(keep.sum()), self.bootstrap, self.bootstrap_seed).numpy()
            lo, hi = percentile_interval(image_level_aurc(confidence, risk, weights), self.bootstrap_level)
            out.update({"image_AURC_ci_lo": lo, "image_AURC_ci_hi": hi})
        return out

    def intervals(self, records) -> dict:
        """``<metric>_ci_lo`` / ``_ci_hi``: percentile-bootstrap intervals over the images (nan
        with fewer than two images, where resampling says nothing)."""
        if not self.bootstrap:
            return {}
        stats_size = StatsRecordMetrics(self.num_fine_bins, self.num_bins, self.threshold).size
        metric_fn = self.metric_fn(classwise=records.shape[1] > stats_size)
        if records.shape[0] < 2:
            print_log("SegCalibrationMetric: one image, no bootstrap interval", logger="current")
            names = metric_fn(records)
            return {f"{n}_ci_{side}": math.nan for n in names for side in ("lo", "hi")}
        intervals = bootstrap_intervals(
            records, metric_fn, self.bootstrap, self.bootstrap_level, self.bootstrap_seed
        )
        return {
            f"{name}_ci_{side}": value
            for name, (lo, hi) in intervals.items()
            for side, value in (("lo", lo), ("hi", hi))
        }
