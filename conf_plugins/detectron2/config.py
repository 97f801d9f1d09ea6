"""Config keys of the detectron2 components (call before ``merge_from_file``)."""

import math

from detectron2.config import CfgNode as CN


def add_ddn_config(cfg):
    """Add the keys of the dropout box head, MC-dropout inference, DDN and our evaluator."""
    _C = cfg
    # Dropout rate after each FC layer of DropoutFastRCNNConvFCHead (0 = the stock head).
    _C.MODEL.ROI_BOX_HEAD.DROPOUT = 0.0

    _C.MODEL.MC_DROPOUT = CN()
    # M forward samples of the box head with dropout on, averaged (MCDropoutROIHeads, MC-M).
    _C.MODEL.MC_DROPOUT.NUM_SAMPLES = 10
    # Detections also carry pred_entropy, pred_mutual_info and pred_box_std (MCDropoutROIHeads).
    _C.MODEL.MC_DROPOUT.OUTPUT_UNCERTAINTY = False
    # Detections carry pred_class_probs, the K+1 softmax of their proposal (our ROI heads:
    # ProbabilityROIHeads = the stock ones plus this, MCDropoutROIHeads, DDNROIHeads; our
    # build_calibrated_model turns StandardROIHeads into ProbabilityROIHeads for it).
    _C.MODEL.ROI_HEADS.OUTPUT_CLASS_PROBS = False
    # Mask heads: detections also carry pred_mask_quality, the mean mask probability inside
    # the binarised mask (ProbabilityROIHeads; TEST.CALIBRATION.MASK_CONFIDENCE uses it).
    _C.MODEL.ROI_HEADS.OUTPUT_MASK_QUALITY = False
    # Calibration as a post-processing stage of any detector (conf_plugins.detectron2.calibration_stage):
    # applied to each output Instances after detectron2's detector_postprocess, in output
    # coordinates, for GeneralizedRCNN (Faster / Mask / Cascade R-CNN, PanopticFPN), RetinaNet
    # and FCOS. Fitted on a held-out split by tools/fit_detection_calibration.py, which reads
    # the same keys, and loaded from its checkpoint. METHOD: "" (none), "identity" (scores
    # unchanged: operating thresholds only), "temperature" (the K+1 class probabilities of ROI
    # heads, or the sigmoid logit of dense heads, / T), "platt", "linear", "histogram",
    # "isotonic" (maps of each detection's score; conf_plugins.calibration.score_calibrators).
    _C.MODEL.CALIBRATION = CN()
    _C.MODEL.CALIBRATION.METHOD = ""
    # What the calibrated score predicts: "hit" (a match at IOU), "iou" (the IoU with the
    # matched GT box, 0 when unmatched) or "mask_iou" (the same matched by mask IoU: post-hoc
    # mask scoring of Mask R-CNN); one map per class (CLASSWISE) or one for all.
    _C.MODEL.CALIBRATION.TARGET = "hit"
    _C.MODEL.CALIBRATION.CLASSWISE = True
    _C.MODEL.CALIBRATION.NUM_BINS = 10  # histogram: equal-width score bins
    _C.MODEL.CALIBRATION.ISOTONIC_BINS = 1000  # isotonic: fine bins streamed
    # A held-out detection is correct (the fitting target) if it matches GT at IoU >= this;
    # also the TP IoU τ of the LRP that chooses the operating thresholds.
    _C.MODEL.CALIBRATION.IOU = 0.5
    # Operating thresholds: the fit chooses per class the LRP-optimal score threshold on the
    # held-out split after calibration (candidates every 1 / THRESHOLD_BINS; a class with
    # fewer than THRESHOLD_MIN_DETECTIONS held-out detections or no GT gets the pooled one);
    # OPERATING_THRESHOLDS True applies them in inference (keep calibrated score > threshold).
    _C.MODEL.CALIBRATION.OPERATING_THRESHOLDS = False
    _C.MODEL.CALIBRATION.THRESHOLD_BINS = 200
    _C.MODEL.CALIBRATION.THRESHOLD_MIN_DETECTIONS = 10
    # Conformal box intervals (conf_plugins.calibration.conformal), fitted on matched held-out
    # detections in output coordinates: SCORE "" (none), "additive", "normalised" (by the
    # predicted box's width / height) or "std" (by pred_box_std of MC-dropout heads);
    # CORRECTION over the 4 coordinates "max_rank" or "bonferroni"; miscoverage ALPHA; per
    # class (CLASSWISE) or pooled. Inference adds pred_boxes_inner / pred_boxes_outer.
    _C.MODEL.CALIBRATION.BOX_CONFORMAL = CN()
    _C.MODEL.CALIBRATION.BOX_CONFORMAL.SCORE = ""
    _C.MODEL.CALIBRATION.BOX_CONFORMAL.CORRECTION = "max_rank"
    _C.MODEL.CALIBRATION.BOX_CONFORMAL.ALPHA = 0.1
    _C.MODEL.CALIBRATION.BOX_CONFORMAL.CLASSWISE = True
    # Conformal class-label sets (conf_plugins.calibration.class_sets, ClassThr of Timans et
    # al. 2024): per class a threshold on 1 - p(class) of the class-probability vectors (ROI
    # heads), fitted on held-out detections matched to GT by IoU whatever their class, so that
    # the GT class is in pred_class_sets with probability >= 1 - ALPHA, per class.
    _C.MODEL.CALIBRATION.CLASS_SETS = CN()
    _C.MODEL.CALIBRATION.CLASS_SETS.ENABLED = False
    _C.MODEL.CALIBRATION.CLASS_SETS.ALPHA = 0.1

    _C.MODEL.DDN = CN()
    # Checkpoint of the trained dropout teacher (its box head + predictor are used).
    _C.MODEL.DDN.TEACHER_WEIGHTS = ""
    # M MC-dropout samples of the teacher per proposal; the target is their mean logit.
    _C.MODEL.DDN.NUM_SAMPLES = 10
    # Dropout rate of the teacher while sampling targets; < 0 means ROI_BOX_HEAD.DROPOUT.
    _C.MODEL.DDN.TEACHER_DROPOUT = -1.0
    # A GT box is "detected" by the teacher if an MC-sample detection of its class overlaps
    # it with IoU >= MATCH_IOU; proposals of undetected GT get a uniform target.
    _C.MODEL.DDN.MATCH_IOU = 0.5
    # Loss = DISTILL_WEIGHT * L2(student logits, target) + GT_WEIGHT * CE + box regression
    # (DDN eq. 7; the paper's Table II uses 0.5 on the distillation term).
    _C.MODEL.DDN.DISTILL_WEIGHT = 0.5
    _C.MODEL.DDN.GT_WEIGHT = 1.0

    # COCO-format datasets to register before training / testing: [name, json_file, image_root]
    # triples (tools/train_net.py --coco NAME JSON IMAGE_ROOT adds more).
    _C.DATASETS.COCO = []

    _C.TEST.CALIBRATION = CN()
    # IoU thresholds that decide whether a detection is correct (DDN paper Fig. 4).
    _C.TEST.CALIBRATION.IOU_THRESHOLDS = (0.3, 0.5, 0.7)
    # Coarse bins of ECE / MSCE / MCE and the reliability diagrams.
    _C.TEST.CALIBRATION.NUM_BINS = 10
    # Percentile-bootstrap 95 % intervals over images of every calibration metric
    # (<metric>_ci_lo / _ci_hi): resamples (0 = none) and their seed.
    _C.TEST.CALIBRATION.BOOTSTRAP = 1000
    _C.TEST.CALIBRATION.BOOTSTRAP_SEED = 0
    # LaECE / LaACE (IoU target) confidence bins (25: the code of Kuzucu et al., ECCV 2024),
    # and the score bins of the LRP curves (LRP-optimal thresholds every 1 / LRP_BINS).
    _C.TEST.CALIBRATION.LOCALISATION_BINS = 25
    # selective prediction: risk_at_coverage at this coverage, coverage_at_risk at this risk
    _C.TEST.CALIBRATION.SELECTIVE_COVERAGE = 0.8
    _C.TEST.CALIBRATION.SELECTIVE_RISK = 0.05
    _C.TEST.CALIBRATION.LRP_BINS = 200
    # The confidence of a mask in the segm/ metrics: "score" (the detection's score) or
    # "mask_quality" (score x pred_mask_quality: MODEL.ROI_HEADS.OUTPUT_MASK_QUALITY True).
    _C.TEST.CALIBRATION.MASK_CONFIDENCE = "score"

    # An image corruption applied by every test loader before the stock resize (COCO-C
    # protocol; conf_plugins.shift): NAME one of conf_plugins.shift.CORRUPTIONS, "" = none.
    _C.INPUT.CORRUPTION = CN()
    _C.INPUT.CORRUPTION.NAME = ""
    _C.INPUT.CORRUPTION.SEVERITY = 3  # 1-5
    return cfg


MODEL_ZOO_PREFIX = "model_zoo:"
MASK_CONFIDENCES = ("score", "mask_quality")


def merge_config_file(cfg, path: str):
    """``cfg.merge_from_file(path)``, where ``path`` or a ``_BASE_`` may also name a stock
    config of detectron2's model zoo as ``model_zoo:COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml``.

    yacs resolves ``_BASE_`` only relative to the including file, and the stock configs live
    inside the installed detectron2 package; this lets our configs inherit them instead of
    copying them, on any detectron2 install. The zoo base is merged first, then our files
    from the root of their ``_BASE_`` chain to ``path``.
    """
    import os

    import yaml
    from detectron2 import model_zoo
    from detectron2.config import CfgNode

    if path.startswith(MODEL_ZOO_PREFIX):  # a stock config itself, e.g. --config-file model_zoo:...
        cfg.merge_from_file(model_zoo.get_config_file(path[len(MODEL_ZOO_PREFIX) :]))
        return cfg
    chain, current = [], os.path.abspath(path)
    while True:
        if not os.path.isfile(current):
            raise FileNotFoundError(f"config file not found: {current}")
        with open(current) as f:
            data = yaml.safe_load(f) or {}
        chain.insert(0, data)
        base = data.pop("_BASE_", None)
        if base is None:
            break
        if base.startswith(MODEL_ZOO_PREFIX):
            cfg.merge_from_file(model_zoo.get_config_file(base[len(MODEL_ZOO_PREFIX) :]))
            break
        current = os.path.join(os.path.dirname(current), os.path.expanduser(base))
    for data in chain:
        cfg.merge_from_other_cfg(CfgNode(data))
    return cfg


def _check(ok: bool, key: str, value, rule: str):
    if not ok:
        raise ValueError(f"{key} must be {rule}, got {value!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_ddn_config(cfg):
    """Check the keys of :func:`add_ddn_config` when a component is built (not after a run),
    naming the bad key and value. Returns the effective teacher dropout rate."""
    ddn = cfg.MODEL.DDN
    _check(
        _is_int(cfg.MODEL.MC_DROPOUT.NUM_SAMPLES) and cfg.MODEL.MC_DROPOUT.NUM_SAMPLES >= 1,
        "MODEL.MC_DROPOUT.NUM_SAMPLES",
        cfg.MODEL.MC_DROPOUT.NUM_SAMPLES,
        "an integer >= 1",
    )
    _check(
        _is_int(ddn.NUM_SAMPLES) and ddn.NUM_SAMPLES >= 1,
        "MODEL.DDN.NUM_SAMPLES",
        ddn.NUM_SAMPLES,
        "an integer >= 1",
    )
    _check(
        _is_real(ddn.TEACHER_DROPOUT) and (ddn.TEACHER_DROPOUT == -1 or 0 < ddn.TEACHER_DROPOUT < 1),
        "MODEL.DDN.TEACHER_DROPOUT",
        ddn.TEACHER_DROPOUT,
        "in (0, 1), or -1 for MODEL.ROI_BOX_HEAD.DROPOUT",
    )
    _check(
        _is_real(ddn.MATCH_IOU) and 0 < ddn.MATCH_IOU <= 1, "MODEL.DDN.MATCH_IOU", ddn.MATCH_IOU, "in (0, 1]"
    )
    for key in ("DISTILL_WEIGHT", "GT_WEIGHT"):
        _check(_is_real(ddn[key]) and ddn[key] >= 0, f"MODEL.DDN.{key}", ddn[key], "a finite number >= 0")
    return ddn.TEACHER_DROPOUT if ddn.TEACHER_DROPOUT >= 0 else cfg.MODEL.ROI_BOX_HEAD.DROPOUT


def validate_calibration_stage_config(cfg):
    """Check ``MODEL.CALIBRATION`` (and its ``BOX_CONFORMAL``) when the stage is built."""
    from conf_plugins.calibration.conformal import CORRECTIONS, SCORES
    from conf_plugins.calibration.score_calibrators import METHODS, TARGETS

    sc = cfg.MODEL.CALIBRATION
    key = "MODEL.CALIBRATION."
    _check(sc.METHOD in ("",) + METHODS, key + "METHOD", sc.METHOD, f"'' or one of {METHODS}")
    for name in ("NUM_BINS", "ISOTONIC_BINS", "THRESHOLD_BINS", "THRESHOLD_MIN_DETECTIONS"):
        _check(
            _is_int(sc[name]) and 1 <= sc[name] <= 100000, key + name, sc[name], "an integer in [1, 100000]"
        )
    _check(_is_real(sc.IOU) and 0 < sc.IOU < 1, key + "IOU", sc.IOU, "in (0, 1)")
    _check(sc.TARGET in TARGETS, key + "TARGET", sc.TARGET, f"one of {TARGETS}")
    for name in ("CLASSWISE", "OPERATING_THRESHOLDS"):
        _check(isinstance(sc[name], bool), key + name, sc[name], "True or False")
    if sc.OPERATING_THRESHOLDS and not sc.METHOD:
        raise ValueError(
            f"{key}OPERATING_THRESHOLDS needs the thresholds of a fitted calibrator: set {key}METHOD "
            "(e.g. 'identity' for thresholds on the uncalibrated scores) and load the checkpoint of "
            "tools/fit_detection_calibration.py"
        )
    bc, key = sc.BOX_CONFORMAL, key + "BOX_CONFORMAL."
    _check(bc.SCORE in ("",) + SCORES, key + "SCORE", bc.SCORE, f"'' or one of {SCORES}")
    _check(bc.CORRECTION in CORRECTIONS, key + "CORRECTION", bc.CORRECTION, f"one of {CORRECTIONS}")
    _check(_is_real(bc.ALPHA) and 0 < bc.ALPHA < 1, key + "ALPHA", bc.ALPHA, "in (0, 1)")
    _check(isinstance(bc.CLASSWISE, bool), key + "CLASSWISE", bc.CLASSWISE, "True or False")
    cs, key = sc.CLASS_SETS, "MODEL.CALIBRATION.CLASS_SETS."
    _check(isinstance(cs.ENABLED, bool), key + "ENABLED", cs.ENABLED, "True or False")
    _check(_is_real(cs.ALPHA) and 0 < cs.ALPHA < 1, key + "ALPHA", cs.ALPHA, "in (0, 1)")
    return sc


def validate_calibration_config(cfg):
    """Check ``TEST.CALIBRATION`` when the evaluator is built; returns (thresholds, bins)."""
    from conf_plugins.calibration import CalibrationStats

    calib = cfg.TEST.CALIBRATION
    thresholds = calib.IOU_THRESHOLDS
    _check(
        isinstance(thresholds, (list, tuple))
        and len(thresholds) > 0
        and all(_is_real(t) and 0 < t <= 1 for t in thresholds),
        "TEST.CALIBRATION.IOU_THRESHOLDS",
        thresholds,
        "a non-empty list of IoUs in (0, 1]",
    )
    num_bins, _ = CalibrationStats().check_metric_args(
        calib.NUM_BINS, 0.5, names=("TEST.CALIBRATION.NUM_BINS", "threshold")
    )
    _check(
        isinstance(calib.BOOTSTRAP, int)
        and not isinstance(calib.BOOTSTRAP, bool)
        and (calib.BOOTSTRAP == 0 or calib.BOOTSTRAP >= 2),
        "TEST.CALIBRATION.BOOTSTRAP",
        calib.BOOTSTRAP,
        "0 (no intervals) or an integer >= 2",
    )
    for name in ("SELECTIVE_COVERAGE", "SELECTIVE_RISK"):
        _check(
            _is_real(calib[name]) and 0 < calib[name] <= 1,
            f"TEST.CALIBRATION.{name}",
            calib[name],
            "in (0, 1]",
        )
    for name in ("LOCALISATION_BINS", "LRP_BINS"):
        _check(
            _is_int(calib[name]) and 1 <= calib[name] <= 100000,
            f"TEST.CALIBRATION.{name}",
            calib[name],
            "an integer in [1, 100000]",
        )
    _check(
        calib.MASK_CONFIDENCE in MASK_CONFIDENCES,
        "TEST.CALIBRATION.MASK_CONFIDENCE",
        calib.MASK_CONFIDENCE,
        f"one of {MASK_CONFIDENCES}",
    )
    _check(
        isinstance(calib.BOOTSTRAP_SEED, int),
        "TEST.CALIBRATION.BOOTSTRAP_SEED",
        calib.BOOTSTRAP_SEED,
        "an integer",
    )
    return tuple(float(t) for t in thresholds), num_bins
