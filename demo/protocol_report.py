"""The demo report's detection protocol section (Kuzucu et al., ECCV 2024): every method at
its per-class LRP-optimal operating thresholds chosen on calib, evaluated on val; the
calibrator to the IoU chosen on calib against the uncalibrated detector (paired intervals);
the conformal box intervals' coverage against the binomial range of their level."""

import glob
import json
import os

import torch
from demo_report import _fmt, _paired_rows
from run_demo import protocol_variants

from conf_plugins.calibration.detection_stats import detection_record_metrics

MODELS = (
    ("Baseline", "baseline"),
    ("MC-10", "mc10"),
    ("DDN", "ddn"),
    ("DDN without teacher (control)", "control"),
)
COLUMNS = ("LRP", "LaECE", "LaACE", "D-ECE", "ECE")
ALPHA = 0.1
GOAL_LAECE_CUT = 0.70  # the best calibrator to IoU cuts LaECE at the thresholds by >= 70 %
GOAL_POINTS = 0.5  # ... with LRP (in %) and AP no worse than this many points


def _load(folder):
    path = os.path.join(folder, "eval_results.json")
    if not os.path.exists(path):
        return None
    fitted = os.path.join(folder, "model.json")
    records = glob.glob(os.path.join(folder, "inference", "*", "calibration", "records.pt"))
    return {
        "eval": json.load(open(path)),
        "fit": json.load(open(fitted)) if os.path.exists(fitted) else {},
        "records": records[0] if records else None,
    }


def calib_criterion(fit: dict):
    """The calib LaECE that chooses among calibrators: cross-fitted (each half of calib scored
    by the map fitted on the other) for the per-class maps, in-sample for identity and the
    one-parameter temperature (nothing to overfit)."""
    crossed = fit.get("cross_fitted_at_thresholds") or {}
    return crossed.get("LaECE@IoU0.5", fit.get("held_out_at_thresholds", {}).get("LaECE@IoU0.5"))


def _interval(cal, name):
    lo, hi = cal.get(f"{name}@IoU0.5_ci_lo"), cal.get(f"{name}@IoU0.5_ci_hi")
    value = cal.get(f"{name}@IoU0.5")
    return _fmt(value) + ("" if lo is None else f" [{_fmt(lo)}, {_fmt(hi)}]")


def binomial_range(n: int, level: float, mass: float = 0.95) -> tuple:
    """The central ``mass`` range of the share of successes among n draws at rate ``level``."""
    from scipy.stats import binom

    return (
        float(binom.ppf((1 - mass) / 2, n, level)) / n,
        float(binom.ppf((1 + mass) / 2, n, level)) / n,
    )


def protocol_section(out, numbers):
    """Markdown lines of the protocol tables (nothing when the protocol did not run)."""
    root = os.path.join(out, "det", "protocol")
    runs = {}
    for label, model in MODELS:
        for variant, method, target, box in protocol_variants(model):
            run = _load(os.path.join(root, f"{model}_{variant}"))
            if run is not None:
                runs[(model, variant)] = dict(run, label=label, method=method, target=target, box=bool(box))
    if not runs:
        return []
    table, lines = (
        [],
        [
            "## Detection at the operating point (the protocol of Kuzucu et al., ECCV 2024)",
            "",
            "Each calibrator is fitted on calib, then each class's LRP-optimal score threshold is chosen "
            "on the calibrated calib detections; val is evaluated at those thresholds (only the "
            "detections above them count). LaECE / LaACE use the IoU with the matched GT as target "
            "(0 for a false positive); LRP at τ = 0.5. calib LaECE is the choice criterion, "
            "cross-fitted for the per-class maps (each half of the calib images scored by the map "
            "fitted on the other half: a binned map scores ≈ 0 on its own fit data). 95 % "
            "bootstrap intervals over val images in brackets; lower is better for every column but AP.",
            "",
            "| model | calibrator | target | calib LaECE | AP | " + " | ".join(COLUMNS) + " | detections |",
            "|---|---|---|---|---|" + "---|" * len(COLUMNS) + "---|",
        ],
    )
    for (model, variant), run in runs.items():
        if run["box"]:
            continue
        cal, bbox = run["eval"]["calibration"], run["eval"].get("bbox", {})
        row = {
            "model": run["label"],
            "calibrator": run["method"],
            "target": run["target"] if run["method"] != "identity" else "-",
            "calib_LaECE": calib_criterion(run["fit"]),
            "AP": bbox.get("AP"),
            **{name: cal.get(f"{name}@IoU0.5") for name in COLUMNS},
            "detections": cal.get("count@IoU0.5"),
        }
        table.append(dict(row, key=f"{model}_{variant}"))
        lines.append(
            f"| {row['model']} | {row['calibrator']} | {row['target']} | {_fmt(row['calib_LaECE'])} | "
            f"{_fmt(row['AP'], 2)} | "
            + " | ".join(_interval(cal, name) for name in COLUMNS)
            + f" | {_fmt(row['detections'], 0)} |"
        )
    numbers["protocol"] = {"rows": table}
    lines += (
        [""] + _cost_lines(runs, numbers) + _choice_lines(runs, numbers) + _conformal_lines(runs, numbers)
    )
    return lines


def _cost_lines(runs, numbers):
    """What fitting calibrator + thresholds (+ box intervals) cost against one evaluation
    (inference + evaluator) of the held-out split, from the fits' own timings."""
    ratios = {
        f"{m}_{v}": r["fit"]["seconds"]["total"] / r["fit"]["seconds"]["inference"]
        for (m, v), r in runs.items()
        if r["fit"].get("seconds", {}).get("inference")
    }
    if not ratios:
        return []
    numbers["protocol"]["fit_cost_ratio"] = ratios
    worst = max(ratios, key=ratios.get)
    return [
        f"Fit cost (calibrator + thresholds + any box intervals) against one evaluation of calib: "
        f"median {sorted(ratios.values())[len(ratios) // 2]:.2f}×, worst {ratios[worst]:.2f}× "
        f"(`{worst}`; goal ≤ 2×).",
        "",
    ]


def _choice_lines(runs, numbers):
    """The Baseline's calibrator to the IoU with the lowest calib LaECE, against the
    uncalibrated Baseline on val (paired bootstrap), and the goal."""
    candidates = {
        v: r for (m, v), r in runs.items() if m == "baseline" and r["target"] == "iou" and not r["box"]
    }
    base = runs.get(("baseline", "identity"))
    scored = {v: calib_criterion(r["fit"]) for v, r in candidates.items()}
    scored = {v: s for v, s in scored.items() if s is not None}
    if not scored or base is None or base["records"] is None:
        return []
    chosen = min(scored, key=scored.get)
    run = candidates[chosen]
    if run["records"] is None:
        return []
    a, b = torch.load(run["records"], weights_only=False), torch.load(base["records"], weights_only=False)
    fn = detection_record_metrics(
        a["num_classes"],
        a["bins"],
        a["num_bins"],
        a["num_fine_bins"],
        a["localisation_bins"],
        a["lrp_bins"],
        0.5,
    )
    k = a["iou_thresholds"].index(0.5)
    pairs = _paired_rows(
        f"Baseline + {run['method']} (IoU)",
        "Baseline",
        {"images": a["images"], "records": a["records"][""][k]},
        {"images": b["images"], "records": b["records"][""][k]},
        fn,
        ("LaECE", "LaACE", "LRP", "ECE"),
    )
    cal_a, cal_b = run["eval"]["calibration"], base["eval"]["calibration"]
    if not cal_b["LaECE@IoU0.5"] > 0:
        return []  # nothing to cut
    laece_cut = 1 - cal_a["LaECE@IoU0.5"] / cal_b["LaECE@IoU0.5"]
    lrp_change = 100 * (cal_a["LRP@IoU0.5"] - cal_b["LRP@IoU0.5"])
    ap_change = run["eval"]["bbox"]["AP"] - base["eval"]["bbox"]["AP"]
    met = laece_cut >= GOAL_LAECE_CUT and lrp_change <= GOAL_POINTS and ap_change >= -GOAL_POINTS
    numbers["protocol"]["choice"] = {
        "chosen": chosen,
        "calib_LaECE": scored,
        "LaECE_cut": laece_cut,
        "LRP_change_points": lrp_change,
        "AP_change_points": ap_change,
        "goal_met": met,
        "paired": pairs,
    }
    lines = [
        f"**Chosen on calib** (lowest calib LaECE among the Baseline's calibrators to the IoU): "
        f"`{run['method']}`. On val against the uncalibrated Baseline at its own thresholds: "
        f"LaECE {100 * laece_cut:+.1f} % cut, LRP {lrp_change:+.2f} points, AP {ap_change:+.2f} "
        f"points (goal: ≥ {100 * GOAL_LAECE_CUT:.0f} % cut, LRP and AP no worse than "
        f"{GOAL_POINTS} points: {'met' if met else 'not met'}). Paired bootstrap, A − B:",
        "",
        "| A | B | metric | A − B | 95 % interval | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for p in pairs:
        lo, hi = p["interval"]
        lines.append(
            f"| {p['A']} | {p['B']} | {p['metric']} | {p['difference']:+.4f} | "
            f"[{lo:+.4f}, {hi:+.4f}] | {p['verdict']} |"
        )
    return lines + [""]


def _conformal_lines(runs, numbers):
    rows = []
    for (model, variant), run in runs.items():
        if not run["box"]:
            continue
        cal, fit = run["eval"]["calibration"], run["fit"].get("box_conformal", {})
        n = int(cal.get("box_matched@IoU0.5", 0))
        if n == 0:
            continue
        alpha = fit.get("alpha", ALPHA)
        lo, hi = binomial_range(n, 1 - alpha)
        coverage = cal["box_coverage@IoU0.5"]
        rows.append(
            {
                "model": run["label"],
                "score": fit.get("score"),
                "correction": fit.get("correction"),
                "alpha": alpha,
                "calib_pairs": fit.get("matched_pairs"),
                "val_matched": n,
                "coverage": coverage,
                "binomial_range": [lo, hi],
                "inside": lo <= coverage,  # the guarantee is a lower bound (Bonferroni over-covers)
                "width": cal["box_interval_width@IoU0.5"],
                "area": cal["box_interval_area@IoU0.5"],
            }
        )
    if not rows:
        return []
    numbers["protocol"]["conformal"] = rows
    lines = [
        "**Conformal box intervals** (fitted on the matched calib detections; val coverage of the "
        "matched GT boxes; the binomial range is where 95 % of coverages of that many boxes fall "
        "when the true rate is 1 − α; the guarantee is coverage ≥ 1 − α, so only a coverage below "
        "the range counts against it — it ignores the spread of the calibration draw, so a "
        "coverage just below it is weak evidence; intervals are fitted on all matched calib "
        "detections, evaluated on those kept at the operating thresholds):",
        "",
        "| model | score | correction | α | calib pairs | val matched | coverage | binomial 95 % range "
        "| width (px) | area (px²) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['score']} | {r['correction']} | {r['alpha']:g} | {r['calib_pairs']} | "
            f"{r['val_matched']} | {r['coverage']:.3f} | [{r['binomial_range'][0]:.3f}, "
            f"{r['binomial_range'][1]:.3f}]{'' if r['inside'] else ' (below)'} | {r['width']:.1f} | "
            f"{r['area']:.0f} |"
        )
    additive = {r["correction"]: r["area"] for r in rows if r["score"] == "additive"}
    for r in rows:
        if r["score"] == "normalised" and r["correction"] in additive:
            change = r["area"] / additive[r["correction"]] - 1
            lines.append(
                f"\nNormalised vs additive ({r['correction']}): mean interval area {100 * change:+.1f} % "
                "(goal: at least 20 % below)."
            )
    return lines + [""]
