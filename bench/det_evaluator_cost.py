#!/usr/bin/env python
"""Cost of the detection calibration evaluator against detectron2's COCOEvaluator.

A COCO-sized synthetic run (default 5000 images x 100 detections x 80 classes, ~7 GT boxes
per image, some of them crowd regions; detections near GT boxes and elsewhere, random
scores): both evaluators are built on the same registered COCO JSON and fed the same
`Instances`, side by side in one process, timed over construction + process() + evaluate()
(COCOEvaluator with its compiled COCOeval, `use_fast_impl=True`; neither writes files).
Prints the ratio ours / COCOEvaluator (goal: <= 0.2); with --json PATH also writes it as a
bench result for docs/generate.py. Not a test.

    .venv/bin/python bench/det_evaluator_cost.py [--images 5000] [--json PATH]
"""

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import tempfile
import time

import torch
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, Instances

from conf_plugins.detectron2.evaluator import DetectionCalibrationEvaluator
from conf_plugins.provenance import write_bench_result

WIDTH, HEIGHT = 640, 480
GOAL = 0.2  # ours / COCOEvaluator, construction + process + evaluate


def random_boxes(g, n):
    xy = torch.rand(n, 2, generator=g) * torch.tensor([WIDTH - 40, HEIGHT - 40])
    wh = 8 + torch.rand(n, 2, generator=g) * 150
    return torch.cat([xy, torch.minimum(xy + wh, torch.tensor([WIDTH, HEIGHT]))], dim=1)


def synthetic(num_images, num_dets, num_classes, seed=0):
    """(COCO JSON dict, outputs per image): detections jittered around GT and random ones."""
    g = torch.Generator().manual_seed(seed)
    images, annotations, outputs = [], [], []
    for image_id in range(1, num_images + 1):
        images.append(dict(id=image_id, width=WIDTH, height=HEIGHT, file_name=f"{image_id}.jpg"))
        num_gt = int(torch.randint(1, 15, (1,), generator=g))
        gt = random_boxes(g, num_gt)
        gt_classes = torch.randint(0, num_classes, (num_gt,), generator=g)
        crowd = torch.rand(num_gt, generator=g) < 0.02
        for box, c, is_crowd in zip(gt.tolist(), gt_classes.tolist(), crowd.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append(
                dict(
                    id=len(annotations) + 1,
                    image_id=image_id,
                    category_id=c + 1,
                    bbox=[box[0], box[1], w, h],
                    area=w * h,
                    iscrowd=int(is_crowd),
                )
            )
        near = min(num_dets // 2, 4 * num_gt)
        pick = torch.randint(0, num_gt, (near,), generator=g)
        boxes = torch.cat(
            [gt[pick] + torch.randn(near, 4, generator=g) * 3, random_boxes(g, num_dets - near)]
        ).clamp(min=0)
        classes = torch.cat(
            [
                torch.where(
                    torch.rand(near, generator=g) < 0.8,
                    gt_classes[pick],
                    torch.randint(0, num_classes, (near,), generator=g),
                ),
                torch.randint(0, num_classes, (num_dets - near,), generator=g),
            ]
        )
        scores, order = torch.rand(num_dets, generator=g).sort(descending=True)
        instances = Instances(
            (HEIGHT, WIDTH), pred_boxes=Boxes(boxes[order]), scores=scores, pred_classes=classes[order]
        )
        outputs.append(({"image_id": image_id}, {"instances": instances}))
    categories = [dict(id=c + 1, name=f"class{c}") for c in range(num_classes)]
    return dict(images=images, annotations=annotations, categories=categories), outputs


def timed_run(make_evaluator, outputs):
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval's printed summary
        evaluator = make_evaluator()
        evaluator.reset()
        for inp, out in outputs:
            evaluator.process([inp], [out])
        results = evaluator.evaluate()
    return time.perf_counter() - start, results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--json", metavar="PATH", help="also write the result as JSON (input of docs/generate.py --bench)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    coco, outputs = synthetic(args.images, args.detections, args.classes)
    with tempfile.TemporaryDirectory() as folder:
        json_file = os.path.join(folder, "instances.json")
        with open(json_file, "w") as f:
            json.dump(coco, f)
        register_coco_instances("bench_det", {}, json_file, folder)
        DatasetCatalog.get("bench_det")  # sets the class-id mapping COCOEvaluator needs (both
        # evaluators load the dataset again when built: that load is inside their time)
        print(
            f"{args.images} images x {args.detections} detections x {args.classes} classes, "
            f"{len(coco['annotations'])} GT boxes ({sum(a['iscrowd'] for a in coco['annotations'])}"
            f" crowd), {args.threads} thread(s)"
        )
        coco_seconds, coco_results = timed_run(
            lambda: COCOEvaluator(
                "bench_det", tasks=("bbox",), distributed=False, output_dir=None, use_fast_impl=True
            ),
            outputs,
        )
        ours_seconds, ours_results = timed_run(
            lambda: DetectionCalibrationEvaluator("bench_det", distributed=False, bootstrap=0), outputs
        )
        boot_seconds, _ = timed_run(  # the same with 1000-resample intervals of every metric
            lambda: DetectionCalibrationEvaluator("bench_det", distributed=False, bootstrap=1000), outputs
        )
    print(f"COCOEvaluator (compiled COCOeval)  {coco_seconds:7.2f} s   AP {coco_results['bbox']['AP']:.2f}")
    cal = ours_results["calibration"]
    print(
        f"DetectionCalibrationEvaluator     {ours_seconds:7.2f} s   "
        f"ECE@0.5 {cal['ECE@IoU0.5']:.4f}, success rate@0.5 {cal['success_rate@IoU0.5']:.3f}, "
        f"{cal['count@IoU0.5']:.0f} detections counted (IoU 0.3 / 0.5 / 0.7)"
    )
    print(f"ratio ours / COCOEvaluator: {ours_seconds / coco_seconds:.3f}x (goal <= 0.2x)")
    extra = boot_seconds - ours_seconds
    print(
        f"with bootstrap intervals (1000 resamples): {boot_seconds:7.2f} s; they add {extra:.2f} s = "
        f"{100 * extra / (coco_seconds + ours_seconds):.1f} % of COCOEvaluator + ours (goal <= 10 %)"
    )
    if args.json:
        write_json(args, coco, coco_seconds, coco_results, ours_seconds, cal, boot_seconds)


def write_json(args, coco, coco_seconds, coco_results, ours_seconds, cal, boot_seconds):
    ratio = ours_seconds / coco_seconds
    num_gt = len(coco["annotations"])
    num_crowd = sum(a["iscrowd"] for a in coco["annotations"])
    description = (
        f"{args.images} images × {args.detections} detections × {args.classes} classes "
        f"(synthetic, {WIDTH}×{HEIGHT} px; {num_gt} GT boxes, {num_crowd} of them crowd; "
        f"detections jittered around GT boxes and elsewhere, random scores), "
        f"{args.threads} thread(s). Both evaluators are built on the same registered COCO JSON "
        f"and fed the same `Instances` in one process; each is timed over construction + "
        f"process() of every image + evaluate(). COCOEvaluator runs bbox AP with the compiled "
        f"COCOeval (`use_fast_impl=True`); DetectionCalibrationEvaluator matches detections at "
        f"IoU 0.3 / 0.5 / 0.7 and computes the calibration metrics; neither writes files."
    )
    columns = ["evaluator", "time (ms)", "ratio to COCOEvaluator", "result"]
    rows = [
        {
            "evaluator": "COCOEvaluator (compiled COCOeval)",
            "time (ms)": round(coco_seconds * 1e3, 1),
            "ratio to COCOEvaluator": 1.0,
            "result": f"AP {coco_results['bbox']['AP']:.2f}",
        },
        {
            "evaluator": "DetectionCalibrationEvaluator",
            "time (ms)": round(ours_seconds * 1e3, 1),
            "ratio to COCOEvaluator": round(ratio, 3),
            "result": f"ECE@0.5 {cal['ECE@IoU0.5']:.4f}, success rate@0.5 "
            f"{cal['success_rate@IoU0.5']:.3f}, {cal['count@IoU0.5']:.0f} detections",
        },
        {
            "evaluator": "DetectionCalibrationEvaluator + 95 % bootstrap intervals (1000 resamples)",
            "time (ms)": round(boot_seconds * 1e3, 1),
            "ratio to COCOEvaluator": round(boot_seconds / coco_seconds, 3),
            "result": "every metric with its interval over images",
        },
    ]
    summary = [
        f"Ratio ours / COCOEvaluator {ratio:.3f}× (goal ≤ {GOAL}×: {'met' if ratio <= GOAL else 'not met'}).",
        f"The bootstrap intervals add {boot_seconds - ours_seconds:.1f} s: "
        f"{100 * (boot_seconds - ours_seconds) / (coco_seconds + ours_seconds):.0f} % of the "
        f"evaluation they belong to, COCOEvaluator + ours without inference (goal ≤ 10 %: "
        f"{'met' if boot_seconds - ours_seconds <= 0.1 * (coco_seconds + ours_seconds) else 'not met'}"
        f"; the model's inference over the same images, not timed here, comes on top).",
    ]
    write_bench_result(
        args.json,
        "Detection calibration evaluator vs COCOEvaluator",
        columns,
        rows,
        summary,
        description,
        command=" ".join(["python", "bench/det_evaluator_cost.py", *sys.argv[1:]]),
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
