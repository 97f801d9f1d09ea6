#!/usr/bin/env python
"""Evaluate a trained model over a corruption × severity grid (calibration under shift).

A detectron2 model (a ``.yaml`` config) or an mmseg model (a ``.py`` config) is evaluated on
its config's test split, clean and under each corruption of ``--corruptions`` at each
severity of ``--severities`` (the COCO-C / Cityscapes-C protocol of Michaelis et al. 2019:
15 corruptions × 5 severities, deterministic per image); every metric of the frameworks' own
evaluators and of ours is kept. Writes ``<output>/shift.json`` (every cell), ``shift.md`` (a
table and the mean / spread over corruptions per severity) and one plot per main metric
against severity.

    python tools/shift_benchmark.py configs/demo/teacher.yaml output/demo/det/teacher/model_final.pth \\
        --corruptions gaussian_noise,defocus_blur,fog,jpeg_compression --output output/shift/baseline
    python tools/shift_benchmark.py configs/mmseg/demo/fcn_r18_stl.py output/demo/seg/stl/iter_600.pth \\
        --corruptions benchmark --severities 1 3 5 --output output/shift/stl

detectron2 ``KEY VALUE`` overrides follow the arguments; mmseg overrides go to ``--cfg-options``.
"""

import argparse
import json
import os
import sys

from conf_plugins.cli import run_main
from conf_plugins.files import refuse_overwrite, write_atomically
from conf_plugins.provenance import run_stamp
from conf_plugins.shift import (
    SEVERITIES,
    grid_table,
    parse_corruptions,
    plot_against_severity,
    severity_summary,
)

DET_METRICS = (
    "bbox/AP",
    "calibration/ECE@IoU0.5",
    "calibration/MSCE@IoU0.5",
    "calibration/LaECE@IoU0.5",
    "calibration/D-ECE@IoU0.5",
    "calibration/AUROC@IoU0.5",
)
SEG_METRICS = ("mIoU", "calib/ECE", "calib/AUROC", "calib/AURC", "calib/coverage", "calib/failure_detection")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", help="a detectron2 .yaml or an mmseg .py config")
    parser.add_argument("checkpoint")
    parser.add_argument(
        "--corruptions",
        default="benchmark",
        help="comma-separated names, 'benchmark' (the 15) or 'all' (the 19)",
    )
    parser.add_argument("--severities", type=int, nargs="+", default=list(SEVERITIES))
    parser.add_argument("--output", required=True, help="folder for shift.json, shift.md, plots")
    parser.add_argument("--force", action="store_true", help="overwrite an existing shift.json")
    parser.add_argument(
        "--cfg-options", nargs="+", default=[], help="mmseg: key=value overrides of the config"
    )
    parser.add_argument("opts", nargs="*", help="detectron2: KEY VALUE overrides (after the options)")
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("--")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.opts = [*args.opts, *extra]
    args.corruptions = parse_corruptions(args.corruptions)
    bad = [s for s in args.severities if s not in SEVERITIES]
    if bad:
        parser.error(f"severities must lie in 1-5, got {bad}")
    return args


def grid(args):
    return [("none", 0)] + [(c, s) for c in args.corruptions for s in args.severities]


def flatten(results: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in results.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)):
            out[f"{prefix}{key}"] = float(value)
    return out


def run_detectron2(args):
    from detectron2.checkpoint import DetectionCheckpointer

    from conf_plugins.detectron2.engine import CalibrationTrainer, argument_parser, setup

    d2_args = argument_parser().parse_args(
        ["--config-file", args.config, "--eval-only", "MODEL.WEIGHTS", args.checkpoint, *args.opts]
    )
    cfg = setup(d2_args)
    if not os.path.isfile(args.checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
    model = CalibrationTrainer.build_model(cfg)
    DetectionCheckpointer(model).load(args.checkpoint)
    rows = []
    for corruption, severity in grid(args):
        cell = cfg.clone()
        cell.defrost()
        cell.INPUT.CORRUPTION.NAME = "" if severity == 0 else corruption
        cell.INPUT.CORRUPTION.SEVERITY = max(severity, 1)
        cell.freeze()
        folder = os.path.join(args.output, f"{corruption}_{severity}")
        evaluators = [
            CalibrationTrainer.build_evaluator(cell, name, output_folder=folder, allow_empty=True)
            for name in cell.DATASETS.TEST
        ]
        results = CalibrationTrainer.test(cell, model, evaluators)
        rows.append({"corruption": corruption, "severity": severity, "metrics": flatten(results)})
    return rows, DET_METRICS


def run_mmseg(args):
    from mmengine.config import DictAction
    from mmengine.runner import Runner

    from conf_plugins.mmseg.checkpoints import require_complete_checkpoint
    from conf_plugins.mmseg.config import load_config
    from conf_plugins.mmseg.corruption import with_corruption

    options = argparse.ArgumentParser()
    options.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    cfg_options = (
        options.parse_args(["--cfg-options", *args.cfg_options]).cfg_options if args.cfg_options else None
    )
    if not os.path.isfile(args.checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
    rows = []
    for corruption, severity in grid(args):
        folder = os.path.join(args.output, f"{corruption}_{severity}")
        cfg = load_config(args.config, cfg_options, folder)
        cfg.load_from = args.checkpoint
        if severity:
            dataset = cfg.test_dataloader.dataset
            dataset.pipeline = with_corruption(dataset.pipeline, corruption, severity)
        runner = Runner.from_cfg(cfg)
        require_complete_checkpoint(runner.model, args.checkpoint)
        metrics = runner.test()
        del runner
        rows.append(
            {
                "corruption": corruption,
                "severity": severity,
                "metrics": {k: float(v) for k, v in metrics.items()},
            }
        )
    return rows, SEG_METRICS


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isfile(args.config):
        raise FileNotFoundError(f"config not found: {args.config}")
    out_json = os.path.join(args.output, "shift.json")
    refuse_overwrite(out_json, args.force)
    os.makedirs(args.output, exist_ok=True)
    framework = "detectron2" if args.config.endswith((".yaml", ".yml")) else "mmseg"
    rows, metrics = (run_detectron2 if framework == "detectron2" else run_mmseg)(args)
    command = " ".join(["python", "tools/shift_benchmark.py", *(argv if argv is not None else sys.argv[1:])])
    result = {
        "framework": framework,
        "config": args.config,
        "checkpoint": args.checkpoint,
        "rows": rows,
        "main_metrics": list(metrics),
        "run": run_stamp(command),
    }

    def dump(tmp):
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)

    write_atomically(out_json, dump)
    metrics = [m for m in metrics if any(m in r["metrics"] for r in rows)]
    lines = [
        f"# Shift benchmark: {args.config}",
        "",
        f"Checkpoint `{args.checkpoint}`; command `{command}`.",
        "",
        "Mean over corruptions [min, max] per severity (0 = clean):",
        "",
        "| severity | " + " | ".join(metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    summaries = {m: {s: (mean, lo, hi) for s, mean, lo, hi, _ in severity_summary(rows, m)} for m in metrics}
    for severity in sorted({r["severity"] for r in rows}):
        cells = [summaries[m].get(severity) for m in metrics]
        lines.append(
            f"| {severity} | "
            + " | ".join("n/a" if c is None else f"{c[0]:.4f} [{c[1]:.4f}, {c[2]:.4f}]" for c in cells)
            + " |"
        )
    lines += ["", "Every cell:", "", *grid_table(rows, metrics), ""]
    for metric in metrics:
        name = metric.replace("/", "_").replace("@", "_")
        plot_against_severity(
            {os.path.basename(os.path.normpath(args.output)): rows},
            metric,
            os.path.join(args.output, f"{name}.png"),
        )
        lines.append(f"![{metric}]({name}.png)")
    with open(os.path.join(args.output, "shift.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {out_json} and shift.md ({len(rows)} cells)")
    return result


if __name__ == "__main__":
    run_main(main)
