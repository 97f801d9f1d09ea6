"""The demo report: side-by-side tables, reliability diagrams, risk-coverage curves,
confidence heat-maps and sigma trajectories, from the outputs of demo/run_demo.py."""

import glob
import json
import math
import os
import re
import shutil

import numpy as np
import torch

from conf_plugins.calibration import CalibrationStats, plot_risk_coverage
from conf_plugins.calibration.bootstrap import paired_bootstrap
from conf_plugins.calibration.detection_stats import DetectionBinStats, detection_record_metrics
from conf_plugins.calibration.plots import plot_classwise_reliability
from conf_plugins.calibration.stats import StatsRecordMetrics
from conf_plugins.provenance import describe_machine, run_stamp
from conf_plugins.shift import plot_against_severity, severity_summary
from conf_plugins.shift.benchmark import MAIN_METRICS

DET_METHODS = (
    ("Baseline", "baseline"),
    ("Baseline + temperature", "baseline_temperature"),
    ("Baseline + isotonic", "baseline_isotonic"),
    ("MC-10", "mc10"),
    ("DDN", "ddn"),
    ("DDN + temperature", "ddn_temperature"),
)
DET_CLASSES = ("disc", "box", "triangle")
SEG_METHODS = (
    ("STL", "stl"),
    ("STL-scaled", "stl_scaled"),
    ("MTL", "mtl"),
    ("MTL max-softmax", "mtl_softmax"),
    ("MC-10", "stl_mc10"),
    ("STL + Selective Scaling", "stl_selective"),
    ("STL + local temperature", "stl_lts"),
    ("MTL + Selective Scaling", "mtl_selective"),
    # fitted on calib + its copies under the protocol's held-out corruptions (Tomani et al. 2021)
    ("STL-scaled (perturbed calib)", "stl_scaled_perturbed"),
    ("MTL (perturbed calib)", "mtl_perturbed"),
    ("STL + Selective Scaling (perturbed calib)", "stl_selective_perturbed"),
    ("STL + local temperature (image)", "stl_lts_image"),
    ("STL + local temperature (image, perturbed calib)", "stl_lts_image_perturbed"),
    ("STL + image temperature", "stl_image_temperature"),
    ("STL + image temperature (perturbed calib)", "stl_image_temperature_perturbed"),
)
# A confidence that calls (almost) every pixel confident flags (almost) no failure: then
# Acc / Precision / F0.5 at 0.5 measure the segmenter, not the confidence.
FLAGS_NOTHING = 0.05  # failure_detection below this: "flags almost nothing"
IOUS = ("0.3", "0.5", "0.7")


def _fmt(v, digits=4):
    return "n/a" if v is None else f"{v:.{digits}f}"


def _stats(state):
    return CalibrationStats.from_state_dict(state)


def detection_section(out, figures, numbers=None):
    rows, curves, panels, lines = [], {}, {}, []
    for label, name in DET_METHODS:
        path = os.path.join(out, "det", name, "eval_results.json")
        if not os.path.exists(path):
            continue
        res = json.load(open(path))
        bbox, cal = res.get("bbox", {}), res["calibration"]
        rows.append((label, name, bbox, cal))
        inference = glob.glob(os.path.join(out, "det", name, "inference", "*", "calibration"))[0]
        stats = torch.load(os.path.join(inference, "stats.pt"), weights_only=True)
        curves[label] = _stats(stats[0.5])
        bins = torch.load(os.path.join(inference, "bin_stats.pt"), weights_only=True)
        panels[label] = DetectionBinStats.from_state_dict(bins[""][0.5])
        for iou in IOUS:
            shutil.copy(
                os.path.join(inference, f"reliability_iou{iou}.png"),
                os.path.join(figures, f"det_reliability_{name}_iou{iou}.png"),
            )
        shutil.copy(
            os.path.join(inference, "dece_map_iou0.5.png"),
            os.path.join(figures, f"det_dece_map_{name}_iou0.5.png"),
        )
    if not rows:
        return []
    if numbers is not None:
        numbers["detection"] = {label: {"bbox": bbox, "calibration": cal} for label, _, bbox, cal in rows}
    main = (
        "ECE",
        "MSCE",
        "MCE",
        "NLL",
        "classwise_ECE",
        "LaECE",
        "LaACE",
        "D-ECE",
        "LRP",
        "oLRP",
        "top1/MSCE",
        "AUROC",
        "coverage",
        "failure_detection",
    )
    lines += [
        "## Detection (Faster R-CNN R18-FPN, demo data)",
        "",
        "Fitted on the held-out calib split (60 images), reported on val (60 images). mAP / "
        "AP50 from COCOEvaluator (in %). A detection is correct when it matches an unmatched "
        "same-class GT with IoU >= t; its confidence is its score. Lower is better for the "
        "ECEs, MSCE, MCE, NLL; coverage = share of detections with score > 0.5, "
        "failure_detection = share of wrong ones below 0.5 (a confidence that flags "
        "nothing scores 0). Definitions in the README (Detection calibration).",
        "",
        "IoU 0.5:",
        "",
        "| method | mAP | AP50 | " + " | ".join(main) + " |",
        "|---|---|---|" + "---|" * len(main),
    ]
    for label, _, bbox, cal in rows:
        cells = [_fmt(bbox.get("AP"), 2), _fmt(bbox.get("AP50"), 2)]
        cells += [_fmt(cal.get(f"{m}@IoU0.5")) for m in main]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    others = [t for t in IOUS if t != "0.5"]
    lines += [
        "",
        "Other IoU thresholds:",
        "",
        "| method | "
        + " | ".join(f"{m}@{t}" for t in others for m in ("ECE", "MSCE", "MCE", "LaECE"))
        + " |",
        "|---|" + "---|" * (4 * len(others)),
    ]
    for label, _, _, cal in rows:
        lines.append(
            f"| {label} | "
            + " | ".join(
                _fmt(cal.get(f"{m}@IoU{t}")) for t in others for m in ("ECE", "MSCE", "MCE", "LaECE")
            )
            + " |"
        )
    lines += [
        "",
        "Detections counted (IoU 0.5): "
        + ", ".join(f"{label} {int(cal['count@IoU0.5'])}" for label, _, _, cal in rows),
        "",
    ]
    lines += goal_lines(rows)
    plot_risk_coverage(
        curves,
        os.path.join(figures, "det_risk_coverage_iou0.5.png"),
        title="Detection risk-coverage, IoU 0.5",
    )
    plot_classwise_reliability(
        panels,
        os.path.join(figures, "det_classwise_reliability_iou0.5.png"),
        DET_CLASSES,
        title="Per-class reliability, IoU 0.5 (val)",
    )
    lines += [
        "![risk-coverage](figures/det_risk_coverage_iou0.5.png)",
        "",
        "Per-class reliability (accuracy against confidence per class, IoU 0.5):",
        "",
        "![per-class reliability](figures/det_classwise_reliability_iou0.5.png)",
        "",
        "D-ECE heat-maps (|precision − confidence| by box centre, IoU 0.5): "
        + ", ".join(f"[{label}](figures/det_dece_map_{name}_iou0.5.png)" for label, name, _, _ in rows),
        "",
    ]
    lines += [
        f"![{label} D-ECE map](figures/det_dece_map_{name}_iou0.5.png)"
        for label, name, _, _ in rows
        if name in ("baseline", "ddn")
    ]
    lines += [""] + [
        f"![{label} reliability, IoU 0.5](figures/det_reliability_{name}_iou0.5.png)"
        for label, name, _, _ in rows
    ]
    return lines + [""]


def goal_lines(rows):
    """The DDN goal against the baseline row: MSCE@0.5 −50 %, ≤ 1 mAP lost, MCE no worse."""
    by = {name: (bbox, cal) for _, name, bbox, cal in rows}
    if "baseline" not in by:
        return []
    (b_box, b_cal), lines = by["baseline"], []
    for name, label in (
        ("ddn", "DDN"),
        ("ddn_temperature", "DDN + temperature"),
        ("baseline_temperature", "Baseline + temperature"),
    ):
        if name not in by:
            continue
        box, cal = by[name]
        msce = 100 * (cal["MSCE@IoU0.5"] / b_cal["MSCE@IoU0.5"] - 1)
        lost = b_box.get("AP", math.nan) - box.get("AP", math.nan)
        mce_ok = cal["MCE@IoU0.5"] <= b_cal["MCE@IoU0.5"]
        met = msce <= -50 and lost <= 1 and mce_ok
        lines.append(
            f"* {label} vs Baseline: MSCE@0.5 {msce:+.1f} %, mAP {-lost:+.2f}, MCE@0.5 "
            f"{cal['MCE@IoU0.5']:.4f} vs {b_cal['MCE@IoU0.5']:.4f} → goal (−50 %, ≤ 1 mAP, "
            f"MCE no worse) **{'met' if met else 'not met'}**."
        )
    return lines + [""] if lines else []


def detection_figures(out, figures):
    """Baseline, MC-10 (with its entropy, mutual information and box std) and DDN detections on
    the first val image, coloured by score (tools/visualize_detections.py, usable on any
    registered dataset), upscaled to read."""
    import importlib.util

    root = os.path.dirname(os.path.abspath(__file__))
    # by its path: tools/ is not on sys.path (and detectron2 may install a `tools` package)
    spec = importlib.util.spec_from_file_location(
        "visualize_detections", os.path.join(root, "..", "tools", "visualize_detections.py")
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    lines = []
    mc10 = [
        "MODEL.ROI_HEADS.NAME",
        "MCDropoutROIHeads",
        "MODEL.MC_DROPOUT.NUM_SAMPLES",
        "10",
        "MODEL.MC_DROPOUT.OUTPUT_UNCERTAINTY",
        "True",
    ]
    for label, name, weights_of, cfg, extra in (
        ("Baseline", "teacher", "teacher", "teacher.yaml", []),
        ("MC-10", "mc10", "teacher", "teacher.yaml", mc10),
        ("DDN", "ddn", "ddn", "ddn.yaml", []),
    ):
        weights = os.path.join(out, "det", weights_of, "model_final.pth")
        if not os.path.exists(weights):
            continue
        folder = os.path.join(figures, f"det_detections_{name}")
        # a DDN student draws without its teacher's file (read only when training)
        (path,) = tool.main(
            [
                "--config-file",
                os.path.join(root, "..", "configs", "demo", cfg),
                "--dataset",
                "conf_demo_det_val",
                "--num-images",
                "1",
                "--min-score",
                "0.3",
                "--output",
                folder,
                "MODEL.WEIGHTS",
                weights,
                "OUTPUT_DIR",
                folder,
                *extra,
            ]
        )
        lines.append(f"![{label} detections](figures/{os.path.relpath(path, figures)})")
    if not lines:
        return []
    return [
        "Detections with score >= 0.3 on the first val image (upscaled), each box coloured by "
        "its score (viridis: dark = unconfident, yellow = confident) and labelled with its "
        "class and score; MC-10 adds H (entropy of the mean class probabilities), MI (mutual "
        "information: the dropout samples' disagreement) and σ (mean std of the box, px) "
        "and draws a ±σ band around each box:",
        "",
        *lines,
        "",
    ]


def segmentation_section(out, figures, numbers=None):
    table, curves = [], {}
    for split, domain in (("val", "in-domain"), ("val_shifted", "off-domain")):
        for label, name in SEG_METHODS:
            folder = os.path.join(out, "seg", "eval", f"{name}_{split}")
            path = os.path.join(folder, "metrics.json")
            if not os.path.exists(path):
                continue
            metrics = json.load(open(path))
            table.append((domain, label, metrics))
            (stats_file,) = glob.glob(os.path.join(folder, "stats_*.pt"))
            curves.setdefault(domain, {})[label] = _stats(torch.load(stats_file, weights_only=True))
            (png,) = glob.glob(os.path.join(folder, "reliability_*.png"))
            shutil.copy(png, os.path.join(figures, f"seg_reliability_{name}_{split}.png"))
    if not table:
        return []
    if numbers is not None:
        numbers["segmentation"] = {}
        for domain, label, metrics in table:
            numbers["segmentation"].setdefault(domain, {})[label] = metrics
    keys = (
        "ECE",
        "AUROC",
        "AURC",
        "AUPR_In",
        "AUPR_Out",
        "coverage",
        "failure_detection",
        "accuracy",
        "precision",
        "F0.5",
    )
    lines = [
        "## Segmentation (FCN R18, demo data)",
        "",
        "Per-pixel confidence: STL = max softmax, STL-scaled = max softmax at the temperature "
        "fitted on the calib split, MTL = probability of success (success branch snapshot + "
        "Bayes binning on the calib split), MTL max-softmax = the same MTL network's own max "
        "softmax (the free baseline it must beat), MC-10 = mean softmax of 10 dropout samples of "
        "the STL model's decode head. At confidence 0.5 (success paper §3.3): "
        "coverage = share of pixels called confident, failure_detection = share of wrong "
        "pixels called unconfident, and Acc / Precision / F0.5. Lower is better for ECE and "
        "AURC. mIoU in %.",
        "",
        "| domain | method | mIoU | " + " | ".join(keys) + " |",
        "|---|---|---|" + "---|" * len(keys),
    ]
    for domain, label, m in table:
        cells = [_fmt(m.get("mIoU"), 2)] + [_fmt(m.get(f"calib/{k}")) for k in keys]
        lines.append(f"| {domain} | {label} | " + " | ".join(cells) + " |")
    lines += [""] + flags_nothing_notes(table)
    for domain, methods in curves.items():
        name = f"seg_risk_coverage_{domain}.png"
        plot_risk_coverage(methods, os.path.join(figures, name), title=f"Segmentation, {domain}")
        lines.append(f"![risk-coverage {domain}](figures/{name})")
    lines += [
        "",
        "Reliability diagrams: "
        + ", ".join(
            f"[{label} {split}](figures/seg_reliability_{name}_{split}.png)"
            for split in ("val", "val_shifted")
            for label, name in SEG_METHODS
        ),
        "",
    ]
    return lines


def risk_control_section(out, numbers=None):
    """Risk-controlled selective segmentation of the STL: λ fitted on calib at level α
    (seg/risk/risk_control.json), realised risk and abstention on val and val_shifted."""
    path = os.path.join(out, "seg", "risk", "risk_control.json")
    if not os.path.exists(path):
        return []
    fitted, rows = json.load(open(path)), {}
    for split in ("val", "val_shifted"):
        metrics_path = os.path.join(out, "seg", "eval", f"stl_{split}", "metrics.json")
        if os.path.exists(metrics_path):
            m = json.load(open(metrics_path))
            rows[split] = {
                k: m[f"calib/{k}"]
                for name in ("selective_risk", "abstention")
                for k in (name, f"{name}_ci_lo", f"{name}_ci_hi")
                if f"calib/{k}" in m
            }
    keys = ("alpha", "threshold", "images", "calib_risk", "calib_abstention")
    if numbers is not None:
        numbers["risk_control"] = {"fitted": {k: fitted[k] for k in keys}, **rows}
    lines = [
        "## Risk-controlled selective segmentation (STL)",
        "",
        f"Conformal risk control on the {fitted['images']} calib images at α = {fitted['alpha']}: "
        f"λ = {fitted['threshold']:.4f} (calib risk {fitted['calib_risk']:.4f}, abstention "
        f"{fitted['calib_abstention']:.4f}). Risk = mean over images of the share of labelled pixels "
        "kept (max softmax > λ) and wrong; the guarantee (risk ≤ α in expectation) needs test "
        "images exchangeable with calib, which val_shifted is not.",
        "",
        "| split | risk [95 % CI] | abstention [95 % CI] |",
        "|---|---|---|",
    ]
    for split, r in rows.items():
        cells = [
            f"{_fmt(r.get(k))} [{_fmt(r.get(f'{k}_ci_lo'))}, {_fmt(r.get(f'{k}_ci_hi'))}]"
            for k in ("selective_risk", "abstention")
        ]
        lines.append(f"| {split} | " + " | ".join(cells) + " |")
    return lines + [""]


def flags_nothing_notes(table):
    """One sentence per row whose confidence, thresholded at 0.5, flags (almost) no failure."""
    notes = []
    for domain, label, m in table:
        detected, coverage = m.get("calib/failure_detection"), m.get("calib/coverage")
        if detected is not None and detected < FLAGS_NOTHING:
            notes.append(
                f"* {label}, {domain}: at 0.5 it calls {100 * coverage:.1f} % of the pixels "
                f"confident and flags only {100 * detected:.1f} % of the wrong ones, so its Acc / "
                "Precision / F0.5 are those of the segmenter (Precision = pixel accuracy), not "
                "evidence about the confidence; read AUROC / AURC instead."
            )
    return notes + [""] if notes else []


def heatmap_section(out, figures):
    """Image | prediction | errors | confidence (ConfidenceSegVisualizer, the one used by
    SegVisualizationHook) for MTL's probability of success and STL's max softmax."""
    from mmseg.apis import init_model

    from conf_plugins.mmseg import draw_confidence_panels

    mtl = sorted(glob.glob(os.path.join(out, "seg", "mtl", "*_fusion.pth")))
    stl = sorted(  # the trained checkpoints, not the calibrated copies beside them
        p
        for p in glob.glob(os.path.join(out, "seg", "stl", "iter_*.pth"))
        if re.fullmatch(r"iter_\d+\.pth", os.path.basename(p))
    )
    if not (mtl and stl):
        return []
    root = os.path.dirname(os.path.abspath(__file__))
    lines = [
        "## Confidence heat-maps",
        "",
        "The same scene in-domain (val) and off-domain (val_shifted): image | prediction | "
        "errors (red; dark = ignored) | confidence, for MTL's probability of success and "
        "STL's max softmax (cf. success paper Fig. 4). Drawn by `ConfidenceSegVisualizer`, "
        "the visualizer `tools/seg_test.py --show-dir` uses.",
        "",
    ]
    for label, cfg, ckpt, field in (
        ("MTL", "fcn_r18_mtl.py", mtl[-1], "pred_confidence"),
        ("STL", "fcn_r18_stl.py", stl[-1], "max_softmax"),
    ):
        model = init_model(os.path.join(root, "..", "configs", "mmseg", "demo", cfg), ckpt, device="cpu")
        for split in ("val", "val_shifted"):
            image = sorted(glob.glob(f"datasets/conf_demo_seg/leftImg8bit/{split}/demo/*.png"))[0]
            label_path = image.replace("leftImg8bit", "gtFine", 1).replace(
                "_leftImg8bit.png", "_gtFine_labelTrainIds.png"
            )
            name = f"{label}_{split}_{field}.png"
            draw_confidence_panels(model, image, os.path.join(figures, name), field, label_path)
            lines.append(f"![{label} {split} {field}](figures/{name})")
    return lines + [""]


def sigma_section(out, figures):
    """Trajectories of the learned task sigmas (Kendall et al.) logged while training MTL."""
    files = glob.glob(os.path.join(out, "seg", "mtl", "*", "vis_data", "scalars.json"))
    if not files:
        return []
    steps, sigmas = [], {}
    for line in open(max(files, key=os.path.getmtime)):
        record = json.loads(line)
        if "decode.sigma_seg" in record:
            steps.append(record["step"])
            for task in ("seg", "success"):
                sigmas.setdefault(task, []).append(record[f"decode.sigma_{task}"])
    if not steps:
        return []
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.2))
    ax = fig.add_subplot()
    for task, values in sigmas.items():
        ax.plot(steps, values, label=f"sigma_{task}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("sigma")
    ax.legend()
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(os.path.join(figures, "sigma_trajectories.png"))
    final = ", ".join(f"sigma_{t} = {v[-1]:.3f}" for t, v in sigmas.items())
    return [
        "## Uncertainty weighting",
        "",
        f"Learned task sigmas at the end: {final}.",
        "",
        "![sigma trajectories](figures/sigma_trajectories.png)",
        "",
    ]


# paired comparisons on the same images (A − B, 95 % paired-bootstrap interval)
DET_PAIRS = (
    ("Baseline + temperature", "Baseline"),
    ("Baseline + isotonic", "Baseline"),
    ("MC-10", "Baseline"),
    ("DDN", "Baseline"),
    ("DDN + temperature", "DDN"),
)
DET_PAIR_METRICS = ("ECE", "MSCE", "LaECE", "D-ECE", "AUROC", "LRP")
SEG_PAIRS = (
    ("MTL", "MTL max-softmax"),
    ("MTL", "STL-scaled"),
    ("STL-scaled", "STL"),
    ("MC-10", "STL"),
    ("STL + Selective Scaling", "STL-scaled"),
    ("STL + local temperature", "STL-scaled"),
    ("MTL + Selective Scaling", "STL-scaled"),
    ("STL-scaled (perturbed calib)", "STL-scaled"),
    ("MTL (perturbed calib)", "STL"),
    ("MTL (perturbed calib)", "MTL max-softmax"),
    ("STL + Selective Scaling (perturbed calib)", "STL-scaled"),
    ("STL + local temperature (image)", "STL-scaled"),
    ("STL + local temperature (image, perturbed calib)", "STL-scaled"),
    ("STL + Selective Scaling (perturbed calib)", "STL-scaled (perturbed calib)"),
    ("STL + local temperature (image, perturbed calib)", "STL-scaled (perturbed calib)"),
    ("STL + image temperature", "STL-scaled"),
    ("STL + image temperature (perturbed calib)", "STL-scaled"),
    ("STL + image temperature (perturbed calib)", "STL-scaled (perturbed calib)"),
)
SEG_PAIR_METRICS = ("ECE", "AUROC", "AURC")
PAIR_RESAMPLES = 1000


def _det_records(out, name):
    (path,) = glob.glob(os.path.join(out, "det", name, "inference", "*", "calibration", "records.pt")) or (
        None,
    )
    return None if path is None else torch.load(path, weights_only=False)


def _seg_records(out, name, split):
    paths = glob.glob(os.path.join(out, "seg", "eval", f"{name}_{split}", "records_*.pt"))
    return torch.load(paths[0], weights_only=False) if paths else None


def _paired_rows(a_label, b_label, a, b, metric_fn, metrics, key=""):
    if a is None or b is None:
        return []
    if a["images"] != b["images"]:
        raise ValueError(f"{a_label} and {b_label} were evaluated on different images")
    paired = paired_bootstrap(a["records"], b["records"], metric_fn, PAIR_RESAMPLES)
    return [{"A": a_label, "B": b_label, "metric": f"{m}{key}", **paired[m]} for m in metrics if m in paired]


def same_settings(a_label, b_label, a, b, keys):
    """Refuse to compare records made with different binning / thresholds / classes."""
    differ = [k for k in keys if a.get(k) != b.get(k)]
    if differ:
        raise ValueError(f"{a_label} and {b_label} were evaluated with different {', '.join(differ)}")


def comparisons_section(out, numbers):
    """Paired-bootstrap intervals of A − B for the pairs the report discusses: "A is better
    than B" only when the interval excludes 0."""
    rows = []
    records = {label: _det_records(out, name) for label, name in DET_METHODS}
    for a, b in DET_PAIRS:
        ra, rb = records.get(a), records.get(b)
        if ra is None or rb is None:
            continue
        same_settings(
            a,
            b,
            ra,
            rb,
            (
                "iou_thresholds",
                "num_bins",
                "num_fine_bins",
                "num_classes",
                "bins",
                "localisation_bins",
                "lrp_bins",
            ),
        )
        k = ra["iou_thresholds"].index(0.5)
        fn = detection_record_metrics(
            ra["num_classes"],
            ra["bins"],
            ra["num_bins"],
            ra["num_fine_bins"],
            ra.get("localisation_bins"),
            ra.get("lrp_bins"),
            0.5,
        )
        rows += [
            dict(r, domain="detection, IoU 0.5")
            for r in _paired_rows(
                a,
                b,
                {"images": ra["images"], "records": ra["records"][""][k]},
                {"images": rb["images"], "records": rb["records"][""][k]},
                fn,
                DET_PAIR_METRICS,
            )
        ]
    seg_names = dict(SEG_METHODS)
    for split, domain in (("val", "in-domain"), ("val_shifted", "off-domain")):
        for a, b in SEG_PAIRS:
            ra, rb = _seg_records(out, seg_names[a], split), _seg_records(out, seg_names[b], split)
            if ra is None or rb is None:
                continue
            same_settings(a, b, ra, rb, ("num_fine_bins", "num_bins", "threshold"))
            fn = StatsRecordMetrics(ra["num_fine_bins"], ra["num_bins"], ra["threshold"])
            rows += [
                dict(r, domain=f"segmentation, {domain}")
                for r in _paired_rows(a, b, ra, rb, fn, SEG_PAIR_METRICS)
            ]
    if not rows:
        return []
    numbers["comparisons"] = rows
    lines = [
        "## Paired comparisons",
        "",
        "A − B on the same images with its 95 % paired-bootstrap interval over images "
        f"({PAIR_RESAMPLES} resamples); a verdict only when the interval excludes 0 (lower "
        "is better for the ECEs and AURC, higher for AUROC).",
        "",
        "| domain | A | B | metric | A − B | 95 % interval | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["interval"]
        verdict = {"A better": f"{r['A']} better", "B better": f"{r['B']} better"}.get(
            r["verdict"], r["verdict"]
        )
        lines.append(
            f"| {r['domain']} | {r['A']} | {r['B']} | {r['metric']} | {r['difference']:+.4f} | "
            f"[{lo:+.4f}, {hi:+.4f}] | {verdict} |"
        )
    return lines + [""]


SHIFT_METRICS = MAIN_METRICS


def shift_section(out, figures, numbers):
    """Each method's metrics against corruption severity (tools/shift_benchmark.py)."""
    results = {}
    for path in sorted(glob.glob(os.path.join(out, "shift", "*", "shift.json"))):
        name = os.path.basename(os.path.dirname(path))
        with open(path) as f:
            results[name] = json.load(f)
    if not results:
        return []
    numbers["shift"] = {name: r["rows"] for name, r in results.items()}
    lines = [
        "## Calibration under corruption",
        "",
        "Each method evaluated clean (severity 0) and under each corruption at severities "
        "1–5 (`tools/shift_benchmark.py`; mean over corruptions, shaded min–max). "
        "Corruptions: "
        + ", ".join(
            sorted({r["corruption"] for res in results.values() for r in res["rows"] if r["severity"]})
        )
        + ".",
        "",
    ]
    for framework, metrics in SHIFT_METRICS.items():
        methods = {n.split("_", 1)[1]: r["rows"] for n, r in results.items() if n.startswith(framework + "_")}
        if not methods:
            continue
        for metric in metrics:
            name = f"shift_{framework}_{metric.replace('/', '_').replace('@', '_')}.png"
            plot_against_severity(methods, metric, os.path.join(figures, name))
            lines.append(f"![{metric} against severity](figures/{name})")
        header = ["method", "severity"] + list(metrics)
        lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method, rows in methods.items():
            summaries = {m: {sv: mean for sv, mean, *_ in severity_summary(rows, m)} for m in metrics}
            for severity in sorted({r["severity"] for r in rows}):
                lines.append(
                    f"| {method} | {severity} | "
                    + " | ".join(_fmt(summaries[m].get(severity)) for m in metrics)
                    + " |"
                )
        lines.append("")
    return lines


SEED_DET_METRICS = ("AP", "ECE@IoU0.5", "MSCE@IoU0.5", "LaECE@IoU0.5")
SEED_SEG_METRICS = ("mIoU", "calib/ECE", "calib/AUROC", "calib/AURC")


def seeds_section(seed_roots, numbers):
    """Mean ± standard deviation over training seeds (seed 0 = the tables above) of the main
    metrics of every method: the spread that the bootstrap over images does not see."""
    import tempfile

    if not seed_roots or len(seed_roots) < 2:
        return []
    per_seed = []
    for root in seed_roots:
        found = {}
        with tempfile.TemporaryDirectory() as scratch:  # figures of other seeds are not kept
            detection_section(root, scratch, found)
            segmentation_section(root, scratch, found)
        per_seed.append(found)
    table = {}
    for found in per_seed:
        for label, res in found.get("detection", {}).items():
            values = {**res.get("bbox", {}), **res["calibration"]}
            for m in SEED_DET_METRICS:
                table.setdefault(("detection", label), {}).setdefault(m, []).append(values.get(m))
        for domain, methods in found.get("segmentation", {}).items():
            for label, metrics in methods.items():
                for m in SEED_SEG_METRICS:
                    table.setdefault((f"segmentation, {domain}", label), {}).setdefault(m, []).append(
                        metrics.get(m)
                    )
    numbers["seeds"] = {
        "count": len(seed_roots),
        "rows": [{"domain": d, "method": label, "values": values} for (d, label), values in table.items()],
    }
    lines = [
        f"## Over {len(seed_roots)} training seeds",
        "",
        "Mean ± standard deviation over the training seeds 0.."
        f"{len(seed_roots) - 1} (the tables above are seed 0); the bootstrap intervals cover "
        "the choice of images, this spread the training.",
        "",
        "| domain | method | metric | mean ± std | per seed |",
        "|---|---|---|---|---|",
    ]
    for row in numbers["seeds"]["rows"]:
        for m, values in row["values"].items():
            finite = [v for v in values if v is not None and not math.isnan(v)]
            if len(finite) < 2:
                continue
            mean, std = float(np.mean(finite)), float(np.std(finite, ddof=1))
            lines.append(
                f"| {row['domain']} | {row['method']} | {m} | {mean:.4f} ± {std:.4f} | "
                + ", ".join(_fmt(v) for v in values)
                + " |"
            )
    return lines + [""]


def write_report(out, record, tiny=False, command=None, seed_roots=None):
    """report.md + report.json (every number of the tables, the stages' commands and timings,
    and the run's stamp: command, UTC date, machine, commit)."""
    figures = os.path.join(out, "figures")
    os.makedirs(figures, exist_ok=True)
    lines = ["# conf_plugins demo report", ""]
    if tiny:
        lines += [
            "**Tiny run** (a few images and iterations): the numbers test the pipeline, they mean nothing.",
            "",
        ]
    numbers = {"tiny": tiny, "run": run_stamp(command)}  # every number of the tables
    lines += detection_section(out, figures, numbers)
    lines += detection_figures(out, figures)
    lines += segmentation_section(out, figures, numbers)
    lines += risk_control_section(out, numbers)
    lines += comparisons_section(out, numbers)
    from protocol_report import protocol_section  # it reads this module's helpers

    lines += protocol_section(out, numbers)
    lines += seeds_section(seed_roots, numbers)
    lines += shift_section(out, figures, numbers)
    lines += heatmap_section(out, figures)
    lines += sigma_section(out, figures)
    run = numbers["run"]
    lines += [
        "## Commands",
        "",
        f"Run: `{run['command']}` on {run['date']}, "
        f"{describe_machine(run['machine'])}, commit {run['commit']}.",
        "",
        "Each stage, as run (skipped stages show their last run):",
        "",
    ]
    for name, info in record.items():
        lines.append(f"* `{name}` ({info.get('seconds', '?')} s): `{info.get('command', '')}`")
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    numbers["stages"] = record
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(numbers, f, indent=1)
    return path
