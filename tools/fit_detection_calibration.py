#!/usr/bin/env python
"""Fit the calibration stage of a detectron2 detector (score calibrator, operating thresholds,
box intervals) on a held-out split, inside its checkpoint.

    tools/fit_detection_calibration.py --config-file configs/demo/teacher.yaml \\
        --dataset conf_demo_det_calib MODEL.WEIGHTS output/demo/det/teacher/model_final.pth \\
        MODEL.CALIBRATION.METHOD isotonic MODEL.CALIBRATION.TARGET iou

Any detector whose inference returns Instances: GeneralizedRCNN (Faster / Mask / Cascade
R-CNN, PanopticFPN), RetinaNet, FCOS, as the config builds it. The stage acts on the
post-processed detections, in output coordinates. ``MODEL.CALIBRATION.METHOD``
(conf_plugins.calibration.score_calibrators): ``identity`` (no map: thresholds only),
``temperature`` (the class probabilities of ROI heads or the sigmoid logit of dense heads, / T),
``platt``, ``linear``, ``histogram``, ``isotonic`` (maps of each detection's score), each
fitted to ``MODEL.CALIBRATION.TARGET`` (``hit``: a match at ``MODEL.CALIBRATION.IOU``;
``iou``: the IoU with the matched GT box), class-wise or not (``CLASSWISE``). The fit then
chooses each class's LRP-optimal score threshold on the calibrated held-out detections
(``THRESHOLD_BINS``, ``THRESHOLD_MIN_DETECTIONS``), applied with
``MODEL.CALIBRATION.OPERATING_THRESHOLDS True``. With ``MODEL.CALIBRATION.BOX_CONFORMAL.SCORE``
set it also fits conformal box intervals on the matched held-out detections.
Writes a *new* checkpoint (default ``<weights>_<method>.pth``; never overwrites unless
--force) holding the weights plus the fitted stage and the fingerprint of the weights it
belongs to, and ``<output>.json`` (what was fitted, on what). Evaluate / deploy it with the
same ``MODEL.CALIBRATION`` keys. Refuses to fit on a split the config evaluates on
(DATASETS.TEST) or trains on unless ``--allow-eval-split``.
"""

import argparse
import json
import os
import tempfile

import torch
from detectron2.checkpoint import DetectionCheckpointer

from conf_plugins.cli import run_main
from conf_plugins.detectron2 import engine
from conf_plugins.detectron2.engine import CalibrationTrainer, add_coco_argument
from conf_plugins.detectron2.score_calibration import fit_calibration_stage
from conf_plugins.files import refuse_overwrite, write_atomically, write_json_atomically


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--dataset", required=True, help="the held-out split (registered name)")
    add_coco_argument(parser)
    parser.add_argument(
        "--output",
        help="the calibrated checkpoint (default: <MODEL.WEIGHTS without .pth>_<method>.pth); "
        "its folder is created",
    )
    parser.add_argument(
        "--allow-eval-split",
        action="store_true",
        help="fit even on a split of DATASETS.TEST / DATASETS.TRAIN",
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    return parser.parse_args(argv)


def setup(args):
    """(the config of the fit, the config of the uncalibrated model it runs): logs in a
    temporary folder, only the held-out split ``--dataset`` registered and checked; the model
    is built with its class probabilities (the temperature fits them) and no fitted stage."""
    fixed = [
        "MODEL.ROI_HEADS.OUTPUT_CLASS_PROBS",
        "True",
        "OUTPUT_DIR",
        tempfile.mkdtemp(prefix="fit_calibration_"),
    ]
    args = argparse.Namespace(**{**vars(args), "opts": [*args.opts, *fixed], "eval_only": True})
    cfg = engine.setup(args, datasets_to_check=(args.dataset,))
    if not cfg.MODEL.CALIBRATION.METHOD:
        raise ValueError(
            "MODEL.CALIBRATION.METHOD is '': name the method to fit, e.g. MODEL.CALIBRATION.METHOD isotonic "
            "(identity, temperature, platt, linear, histogram, isotonic)"
        )
    if cfg.MODEL.CALIBRATION.OPERATING_THRESHOLDS:
        raise ValueError(
            "MODEL.CALIBRATION.OPERATING_THRESHOLDS is set: the fit chooses the thresholds; apply "
            "them when evaluating or deploying the calibrated checkpoint"
        )
    uncalibrated = cfg.clone()
    uncalibrated.defrost()
    uncalibrated.MODEL.CALIBRATION.METHOD = ""
    uncalibrated.MODEL.CALIBRATION.BOX_CONFORMAL.SCORE = ""
    uncalibrated.MODEL.CALIBRATION.CLASS_SETS.ENABLED = False
    uncalibrated.freeze()
    return cfg, uncalibrated


def main(argv=None):
    args = parse_args(argv)
    cfg, uncalibrated = setup(args)
    seen = {*cfg.DATASETS.TEST, *cfg.DATASETS.TRAIN}
    if args.dataset in seen and not args.allow_eval_split:
        raise ValueError(
            f"'{args.dataset}' is a split the config evaluates or trains on "
            "(DATASETS.TEST / TRAIN): a calibrator fitted there flatters the numbers "
            "reported on it; fit on a held-out split, or pass --allow-eval-split"
        )
    weights = cfg.MODEL.WEIGHTS
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"MODEL.WEIGHTS not found: {weights!r}")
    out = args.output or f"{os.path.splitext(weights)[0]}_{cfg.MODEL.CALIBRATION.METHOD}.pth"
    for path in (out, os.path.splitext(out)[0] + ".json"):
        refuse_overwrite(path, args.force)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)  # before the fit, not after
    model = CalibrationTrainer.build_model(uncalibrated)
    checkpoint = DetectionCheckpointer(model).load(weights)  # the extra (non-model) keys
    model.eval()
    summary = fit_calibration_stage(cfg, model, args.dataset)
    summary.update(weights=weights, checkpoint=out)
    checkpoint = {
        **{k: v for k, v in checkpoint.items() if k not in ("optimizer", "scheduler")},
        "model": model.state_dict(),
        "calibration": summary,
    }
    write_atomically(out, lambda tmp: torch.save(checkpoint, tmp))

    write_json_atomically(os.path.splitext(out)[0] + ".json", summary)
    shown = {k: v for k, v in summary.items() if k not in ("bin_values", "uncalibrated")}
    print(json.dumps(shown), flush=True)
    return summary


if __name__ == "__main__":
    run_main(main)
