#!/usr/bin/env python
"""Cost of the detection calibration stage per image, measured side by side in one run (not
a test): the full stage (isotonic scores, operating thresholds at 0 so that every detection
goes through every step, normalised box intervals, and for ROI heads conformal class sets)
applied to a forward pass's outputs, against that forward pass of the same model without a
stage, for the demo Faster R-CNN and the demo RetinaNet. Each repetition times the forward,
then the stage on its outputs (round-robin); each keeps its median.

Goal: the stage costs <= 2 % of one model forward. Its cost is per detection (100 per image
here), the forward's grows with the image: both the demo's 128 px and 320 px are measured.
With --json PATH the result is also
written as a bench result for docs/generate.py.

    .venv/bin/python bench/calibration_stage_cost.py --json output/bench/calibration_stage_cost.json
"""

import argparse
import os
import statistics
import sys
import time

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from conf_plugins.detectron2 import add_ddn_config
from conf_plugins.detectron2.calibration_stage import build_calibrated_model
from conf_plugins.detectron2.config import merge_config_file
from conf_plugins.detectron2.demo_data import random_detection_batch
from conf_plugins.provenance import write_bench_result

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOAL = 0.02  # the stage's share of one forward, at most
MODELS = (
    ("Faster R-CNN", "configs/demo/teacher.yaml", True),
    ("RetinaNet", "configs/demo/retinanet.yaml", False),
)


def config(path, size, stage: bool, class_sets: bool):
    cfg = add_ddn_config(get_cfg())
    merge_config_file(cfg, os.path.join(ROOT, path))
    cfg.MODEL.WEIGHTS = ""
    cfg.INPUT.MIN_SIZE_TEST = cfg.INPUT.MAX_SIZE_TEST = size
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.0  # 100 per image
    if stage:
        cfg.MODEL.CALIBRATION.METHOD = "isotonic"
        cfg.MODEL.CALIBRATION.OPERATING_THRESHOLDS = True
        cfg.MODEL.CALIBRATION.BOX_CONFORMAL.SCORE = "normalised"
        cfg.MODEL.CALIBRATION.CLASS_SETS.ENABLED = class_sets
    return cfg


def fitted_stage(model):
    """Give every part of the stage a fitted state (its values do not matter for the time)."""
    stage = model.calibration_stage
    k = stage.calibrator.num_classes
    x = torch.linspace(0, 1, 50, dtype=torch.float64)
    stage.calibrator.knot_x[:, :50] = x
    stage.calibrator.knot_y[:, :50] = x.sqrt()
    stage.calibrator.set_thresholds(torch.zeros(k))
    stage.box_conformal.quantiles.fill_(0.1)
    if stage.class_sets is not None:
        stage.class_sets.thresholds.fill_(0.5)
    stage.seal(model)


def run(args):
    torch.set_num_threads(args.threads)
    rows, summary = [], []
    for (name, path, class_sets), size in ((m, s) for s in args.sizes for m in MODELS):
        batch = random_detection_batch(args.batch, size, seed=0)
        torch.manual_seed(0)
        plain = build_model(config(path, size, False, class_sets)).eval()
        calibrated = build_calibrated_model(config(path, size, True, class_sets)).eval()
        calibrated.load_state_dict(plain.state_dict(), strict=False)  # same weights
        fitted_stage(calibrated)
        times = {"forward": [], "stage": []}
        stage = calibrated.calibration_stage
        with torch.no_grad():
            for _ in range(2):  # warm-up; verifies the fingerprint once
                calibrated(batch), plain(batch)
            for _ in range(args.reps):  # round-robin: the forward, then the stage on its outputs
                start = time.perf_counter()
                outputs = plain(batch)
                times["forward"].append(time.perf_counter() - start)
                start = time.perf_counter()
                calibrated_outputs = stage(calibrated, batch, outputs)
                times["stage"].append(time.perf_counter() - start)
        detections = sum(len(o["instances"]) for o in outputs) / len(batch)
        assert all(o["instances"].has("pred_boxes_outer") for o in calibrated_outputs)
        forward_ms, stage_ms = (1000 * statistics.median(times[k]) / len(batch) for k in ("forward", "stage"))
        share = stage_ms / forward_ms
        rows.append(
            {
                "model": name,
                "image px": size,
                "detections per image": round(detections),
                "forward ms / image": round(forward_ms, 2),
                "stage ms / image": round(stage_ms, 3),
                "stage share": f"{100 * share:.2f} %",
            }
        )
        verdict = "met" if share <= GOAL else "not met"
        summary.append(
            f"{name}, {size} px: the stage costs {100 * share:.2f} % of one forward "
            f"({stage_ms:.3f} ms per image of {forward_ms:.2f}); goal <= {100 * GOAL:.0f} %: {verdict}."
        )
    for line in summary:
        print(line)
    if args.json:
        write_bench_result(
            args.json,
            "Detection calibration stage: cost per image",
            list(rows[0]),
            rows,
            summary,
            description=(
                f"Demo configs (ResNet-18 FPN), batch of {args.batch} random image(s) of "
                f"{' and '.join(map(str, args.sizes))} px, "
                f"{args.threads} thread(s), CPU, median of {args.reps} round-robin repetitions; the stage "
                "holds isotonic scores, operating thresholds at 0 (every detection kept), normalised box "
                "intervals and, for the ROI heads, class sets; score thresholds 0 (100 detections per "
                "image). "
                "Each repetition times the model's forward, then the stage alone on those outputs."
            ),
            command=" ".join(["python", "bench/calibration_stage_cost.py", *sys.argv[1:]]),
        )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 320], help="image sizes (px)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the result here (a bench result for docs/generate.py)")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
