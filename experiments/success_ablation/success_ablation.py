#!/usr/bin/env python
"""The success-prediction study on the demo data: one command, cached like the demo.

    python experiments/success_ablation/success_ablation.py            # -> output/ablation/report.md + .json

What it varies (the design choices the success paper leaves open), each as a row:

* **training** (one seg_train run each, cached by command + configs, like ``make demo``):
  ``balanced`` = the demo MTL config (uncertainty weighting + class-balanced success loss;
  its run is the demo's own); ``paper`` = the paper's additive loss and plain cross-entropy;
  ``kendall`` = uncertainty weighting, plain cross-entropy; ``seg_conf`` = ``kendall`` + the
  seg logits' max softmax and margin as branch inputs. Every run takes the iteration-200
  snapshot.
* **what predicts success at test time**: ``snapshot`` (the branch frozen at iteration 200,
  paper §3.2), ``live`` (the branch at the end of training = no snapshot), ``refit`` /
  ``refit-balanced`` (a fresh branch trained on the final network's frozen features of the
  even calib images: conf_plugins.mmseg.refit) and, for the demo network, ``net@200`` (the
  whole network at iteration 200 predicts success, the final one segments).
* **the map from score to probability of success**, fitted on held-out data: ``raw`` (the
  success softmax itself), ``bayes10`` (the paper: 10 equal-width bins), ``bayes100``,
  ``mass100`` (100 equal-mass bins, same Bayes rule), ``isotonic`` (scikit-learn) and
  ``fusion`` (logistic regression on the log-odds of the success score *and* of the max
  softmax, both at full resolution) and ``fusion-image`` (the same plus a third input, the
  mean max-softmax log-odds of the pixel's whole image: it can lower every pixel of an image
  that looks unlike calib; study-only, no segmentor holds it).
* **what the map is fitted on**: calib, or calib plus its copies under the shift protocol's
  held-out corruptions (``(perturbed calib)``, as ``tools/fit_calibration.py --perturb`` and
  the demo do, Tomani et al. CVPR 2021): for the STL's temperature and Selective Scaling and
  for the fusion maps of the deployable sources.

Baselines in the same table: STL (max softmax), STL-scaled (temperature fitted on held-out
data), STL + Selective Scaling (``selective``: per-pixel temperature chosen by a correctness
classifier, Wang et al. CVPR 2023; local temperature scaling needs whole images and is in the
demo table instead), STL MC-10 (mean softmax of 10 dropout samples of its decode head) and each MTL
network's own max softmax. Metrics per row: AUROC, AURC, ECE (10 bins, as everywhere),
coverage and failure detection at 0.5, mIoU of the segmenter, in-domain (val) and off-domain
(val_shifted). Ranking metrics come from :class:`CalibrationStats` with 600 000 fine bins, so
ties (near-1 max softmax) are resolved finely.

**Selection never sees val.** The calib split is halved by image (even / odd): maps and
temperature are fitted on one half and the choice is made on the other (``calib-select``
columns): the row with the highest calib-select AUROC among the *deployable* probability-of-
success rows (a trained network's snapshot or live branch with Bayes binning or fusion,
what ``SuccessEncoderDecoder`` holds), ties broken by ECE; the other rows are study-only. The
reported val / val_shifted numbers use maps fitted on the whole
calib split. Evaluation is re-run each time (about a minute); training is cached.
"""

import argparse
import copy
import json
import os
import sys

import numpy as np
import torch

from conf_plugins.calibration.stats import DEFAULT_NUM_BINS
from conf_plugins.provenance import run_stamp
from conf_plugins.shift import parse_corruptions

# the demo's stages are reused: demo/run_demo.py is a script beside this one, not a package
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "demo"))

from run_demo import (
    PERTURB,
    ROOT,
    SEG_DATA_SIZES,
    TINY_PERTURB,
    TINY_SEG,
    TINY_SEG_DATA,
    TINY_SNAPSHOT,
    Stage,
    run_stages,
    segmentation_stages,
    tool,
)

FINE_BINS = 600_000
SPLITS = ("calib", "val", "val_shifted")
MTL_CFG = "configs/mmseg/demo/fcn_r18_mtl.py"
TRAINING = {  # variant -> overrides of the demo MTL config (itself the "balanced" variant)
    "paper": {"model.decode_head.task_weighting": None, "model.decode_head.success_class_weight": None},
    "kendall": {"model.decode_head.success_class_weight": None},
    "seg_conf": {
        "model.decode_head.success_class_weight": None,
        "model.decode_head.success_inputs": ["features", "seg_confidence"],
    },
}
DEMO_VARIANT = "balanced"  # the demo MTL: Kendall weighting + class-balanced success loss
MAPS = ("raw", "bayes10", "bayes100", "mass100", "isotonic", "fusion")
PERTURBED = " (perturbed calib)"  # a map fitted on calib + its corrupted copies
# the extra maps of the deployable sources: fusion on perturbed calib, and fusion-image
FUSION_MAPS = ("fusion" + PERTURBED, "fusion-image", "fusion-image" + PERTURBED)
STL_MAPS = ("softmax", "scaled", "selective", "scaled" + PERTURBED, "selective" + PERTURBED)
# what SuccessEncoderDecoder can hold (Bayes binning, fusion; fit_calibration.py fits fusion on
# perturbed calib too) from a network trained by seg_train: the choice is made among these;
# the other maps and sources are study-only
DEPLOYABLE_MAPS = ("bayes10", "bayes100", "fusion", "fusion" + PERTURBED)
DEPLOYABLE_SOURCES = (" snapshot", " live")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--demo-output",
        default="output/demo",
        help="where make demo keeps its stages (STL and the demo MTL are reused)",
    )
    parser.add_argument("--output", default="output/ablation")
    parser.add_argument("--force", action="store_true", help="re-train every variant")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="a few images and iterations (the tool's own test; numbers meaningless)",
    )
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- training
def training_stages(demo_out, out, tiny):
    """The demo's STL / MTL training (shared with make demo) and one run per variant."""
    demo = [s for s in segmentation_stages(demo_out, tiny) if s.name in ("seg_stl", "seg_mtl")]
    variants = []
    for name, overrides in TRAINING.items():
        options = [f"{key}={cfg_option(value)}" for key, value in overrides.items()]
        options += TINY_SEG + TINY_SNAPSHOT if tiny else []
        variants.append(
            Stage(
                f"ablation_{name}",
                tool("seg_train.py")
                + [os.path.join(ROOT, MTL_CFG), "--work-dir", f"{out}/{name}", "--cfg-options", *options],
                [MTL_CFG, "conf_plugins/mmseg/demo_data.py"],
                output=f"{out}/{name}/iter_{4 if tiny else 600}.pth",
            )
        )
    return demo, variants


def cfg_option(value):
    """A Python value as mmengine's ``--cfg-options`` (DictAction) writes it."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


# ----------------------------------------------------------------------------- inference
def load_model(config, checkpoint, overrides=None):
    """(model in eval mode, its config): ``config`` of this checkout with ``overrides``."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint
    from mmseg.registry import MODELS

    import conf_plugins.mmseg  # noqa: F401

    cfg = Config.fromfile(os.path.join(ROOT, config))
    cfg.merge_from_dict(overrides or {})
    if cfg.model.type == "SuccessEncoderDecoder":  # snapshot rows use it, live rows toggle it
        cfg.model.decode_head.predict_with_snapshot = True
    init_default_scope("mmseg")
    model = MODELS.build(cfg.model)
    load_checkpoint(model, checkpoint, map_location="cpu", strict=True, logger="silent")
    return model.eval(), cfg


def split_loader(cfg, split, corruption=None):
    """The test dataloader of the config, on one demo split; ``corruption`` = (name, severity)
    corrupts each image after loading (conf_plugins.mmseg.corruption)."""
    from mmengine.runner import Runner

    from conf_plugins.mmseg.corruption import with_corruption

    loader_cfg = copy.deepcopy(cfg.test_dataloader)  # a corrupted pipeline must not stay in cfg
    loader_cfg.dataset.data_prefix = dict(img_path=f"leftImg8bit/{split}", seg_map_path=f"gtFine/{split}")
    if corruption is not None:
        loader_cfg.dataset.pipeline = with_corruption(loader_cfg.dataset.pipeline, *corruption)
    return Runner.build_dataloader(loader_cfg)


def perturbations(tiny):
    """The demo's perturbed-calib corruptions: [(name, severity)] from its PERTURB flags."""
    flags = TINY_PERTURB if tiny else PERTURB
    severities = [int(v) for v in flags[flags.index("--perturb-severities") + 1 :]]
    return [(c, sev) for c in parse_corruptions(flags[flags.index("--perturb") + 1]) for sev in severities]


def refitted(model, cfg, balanced):
    """A copy of ``model`` whose success branch is refit on the even calib images (the odd
    ones stay for the choice; val never seen): conf_plugins.mmseg.refit."""
    from conf_plugins.mmseg.refit import refit_success_branch

    copy_ = copy.deepcopy(model)
    loader = split_loader(cfg, "calib")
    even = set(range(0, len(loader.dataset), 2))
    summary = refit_success_branch(copy_, loader, balanced=balanced, images=even)
    print(f"[ablation] refit ({'balanced' if balanced else 'plain'}): {summary}", flush=True)
    return copy_


def pixels(model, cfg, split, live_branch=False, corruption=None):
    """Labelled pixels of a split: dict of flat arrays (image index, label, prediction, max
    softmax, success score if any, logits, group = the image index: one value per image)."""
    head = model.decode_head
    taken = bool(getattr(head, "snapshot_taken", False))
    if live_branch:
        head.snapshot_taken.fill_(False)  # the live branch predicts: no snapshot
    parts = {k: [] for k in ("image", "label", "pred", "max_softmax", "success", "logits")}
    try:
        with torch.no_grad():
            for i, batch in enumerate(split_loader(cfg, split, corruption)):
                for sample in model.test_step(batch):
                    label = sample.gt_sem_seg.data.squeeze(0)
                    keep = label != head.ignore_index
                    logits = sample.seg_logits.data[:, keep].T.float()
                    parts["image"].append(torch.full((int(keep.sum()),), i))
                    parts["label"].append(label[keep])
                    parts["pred"].append(sample.pred_sem_seg.data.squeeze(0)[keep])
                    parts["max_softmax"].append(logits.softmax(1).amax(1))
                    parts["logits"].append(logits)
                    if "success_score" in sample:
                        parts["success"].append(sample.success_score.data.squeeze(0)[keep])
    finally:
        if live_branch:
            head.snapshot_taken.fill_(taken)
    out = {k: torch.cat(v).numpy() for k, v in parts.items() if v}
    out["group"] = out["image"].copy()
    return out


def with_perturbed_calib(model, cfg, data, tiny, live_branch=False):
    """``data`` plus ``calib_perturbed``: the calib images under each perturbation, keeping
    their calib image index (so the even / odd halves hold) in a group of their own."""
    copies = [pixels(model, cfg, "calib", live_branch, c) for c in perturbations(tiny)]
    for k, copy_ in enumerate(copies, start=1):
        copy_["group"] = copy_["image"] + k * (int(data["calib"]["image"].max()) + 1)
    return {**data, "calib_perturbed": concat(copies)}


def concat(parts):
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def mean_iou(pred, label, num_classes):
    """mmseg's mIoU: per-class IoU over the split, mean over classes with a non-empty union."""
    inter = np.bincount(label[pred == label], minlength=num_classes)
    union = np.bincount(pred, minlength=num_classes) + np.bincount(label, minlength=num_classes) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.nanmean(np.where(union > 0, inter / union, np.nan)) * 100)


# ----------------------------------------------------------------------------- maps
def fit_map(kind, score, correct):
    """A function score -> probability of success, fitted on (score, correct)."""
    from conf_plugins.calibration import BayesBinningCalibrator

    if kind == "raw":
        return lambda s: s
    if kind.startswith("bayes"):
        calibrator = BayesBinningCalibrator(int(kind[5:])).fit(score, correct)
        return lambda s: calibrator.predict(torch.from_numpy(s)).numpy()
    if kind == "mass100":  # equal-mass bins; Bayes rule with empirical priors = bin frequency
        edges = np.unique(np.quantile(score, np.linspace(0, 1, 101)[1:-1]))
        bins = np.searchsorted(edges, score, side="left")
        pos = np.bincount(bins, weights=correct, minlength=len(edges) + 1) / np.maximum(
            np.bincount(bins, minlength=len(edges) + 1), 1
        )
        return lambda s: pos[np.searchsorted(edges, s, side="left")]
    if kind == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        iso.fit(score.astype(np.float64), correct.astype(np.float64))
        return lambda s: iso.predict(s.astype(np.float64))
    raise ValueError(kind)


def metrics(confidence, correct, pred=None, label=None, num_classes=None):
    from conf_plugins.calibration import CalibrationStats

    stats = CalibrationStats(FINE_BINS).update(np.clip(confidence, 0.0, 1.0), correct)
    m = stats.compute(num_bins=DEFAULT_NUM_BINS, threshold=0.5)
    out = {k: m[k] for k in ("AUROC", "AURC", "ECE", "coverage", "failure_detection")}
    if pred is not None:
        out["mIoU"] = mean_iou(pred, label, num_classes)
    return out


# ----------------------------------------------------------------------------- study
def fit_confidence(kind, calib, mask):
    """Fit a confidence of kind ``kind`` on the calib pixels under ``mask``; returns
    ``(confidence(pixels) -> per-pixel confidence, fitted temperature or None)``."""
    if kind == "softmax":
        return (lambda d: d["max_softmax"]), None
    if kind == "scaled":
        from conf_plugins.calibration import TemperatureScaler

        t = (
            TemperatureScaler()
            .fit(torch.from_numpy(calib["logits"][mask]), torch.from_numpy(calib["label"][mask]))
            .temperature
        )
        return (lambda d: (torch.from_numpy(d["logits"]) / t).softmax(1).amax(1).numpy()), t
    if kind == "selective":
        from conf_plugins.calibration.pixel_calibrators import SelectiveScaling

        scaling = SelectiveScaling()
        scaling.fit(torch.from_numpy(calib["logits"][mask]), torch.from_numpy(calib["label"][mask]).long())
        return (lambda d: scaling(torch.from_numpy(d["logits"])).softmax(1).amax(1).numpy()), None
    correct = calib["pred"][mask] == calib["label"][mask]
    if kind in ("fusion", "fusion-image"):  # logistic regression on (logit success, logit max softmax)
        from sklearn.linear_model import LogisticRegression

        image = kind == "fusion-image"
        model = LogisticRegression(max_iter=1000).fit(fusion_inputs(calib, mask, image), correct)
        return (lambda d: model.predict_proba(fusion_inputs(d, image=image))[:, 1]), None
    pos = fit_map(kind, calib["success"][mask], correct)
    return (lambda d: pos(d["success"])), None


def fusion_inputs(d, mask=None, image=False):
    """(N, 2) log-odds of the success score and of the max softmax, at full resolution; with
    ``image`` a third column, the mean max-softmax log-odds of each pixel's image (group)."""
    eps = 1e-6
    x = np.stack([np.clip(d["success"], eps, 1 - eps), np.clip(d["max_softmax"], eps, 1 - eps)], 1)
    x = np.log(x / (1 - x))
    if image:
        _, group = np.unique(d["group"], return_inverse=True)
        mean = np.bincount(group, weights=x[:, 1]) / np.bincount(group)
        x = np.concatenate([x, mean[group][:, None]], 1)
    return x if mask is None else x[mask]


def evaluate(sources, num_classes):
    """Rows: {name, map, calib_select / val / val_shifted: metrics} for every (source, map)."""
    rows = []
    for name, data, kinds in sources:
        calib = data["calib"]
        select = calib["image"] % 2 == 1  # fit on even images, choose on odd ones
        held_out = {k: v[select] for k, v in calib.items()}
        for kind in kinds:
            row = {"name": name, "map": kind}
            fit_on = concat([calib, data["calib_perturbed"]]) if kind.endswith(PERTURBED) else calib
            kind = kind.removesuffix(PERTURBED)
            fit_half = fit_on["image"] % 2 == 0
            confidence, _ = fit_confidence(kind, fit_on, fit_half)
            row["calib_select"] = metrics(confidence(held_out), held_out["pred"] == held_out["label"])
            confidence, temperature = fit_confidence(kind, fit_on, np.ones_like(fit_half))
            for split in ("val", "val_shifted"):
                d = data[split]
                row[split] = metrics(
                    confidence(d), d["pred"] == d["label"], d["pred"], d["label"], num_classes
                )
            if temperature is not None:
                row["temperature"] = temperature
            rows.append(row)
    return rows


def choose(rows):
    """Among the deployable probability-of-success rows (a trained network's snapshot or live
    branch + Bayes binning or fusion), the highest calib-select AUROC (then lowest ECE)."""
    candidates = [r for r in rows if r["map"] in DEPLOYABLE_MAPS and r["name"].endswith(DEPLOYABLE_SOURCES)]
    return max(candidates, key=lambda r: (round(r["calib_select"]["AUROC"], 4), -r["calib_select"]["ECE"]))


def write_report(rows, chosen, out):
    keys = ("AUROC", "AURC", "ECE", "coverage", "failure_detection")
    head = (
        "| confidence | map | calib-select AUROC | calib-select ECE | "
        + " | ".join(f"val {k}" for k in keys + ("mIoU",))
        + " | "
        + " | ".join(f"val_shifted {k}" for k in keys)
        + " |"
    )
    lines = [
        "# Success-prediction study (demo data)",
        "",
        "Written by `experiments/success_ablation/success_ablation.py`. Maps and temperatures are "
        "fitted on half of "
        "the calib split and the choice is made on the other half (calib-select); val and "
        "val_shifted use maps fitted on the whole calib split. Lower is better for AURC and "
        "ECE.",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for r in rows:
        mark = " **(chosen)**" if r is chosen else ""
        cells = [f"{r['calib_select']['AUROC']:.4f}", f"{r['calib_select']['ECE']:.4f}"]
        cells += [f"{r['val'][k]:.4f}" for k in keys] + [f"{r['val']['mIoU']:.2f}"]
        cells += [f"{r['val_shifted'][k]:.4f}" for k in keys]
        lines.append(f"| {r['name']}{mark} | {r['map']} | " + " | ".join(cells) + " |")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "report.json"), "w") as f:
        report = {"rows": rows, "chosen": {"name": chosen["name"], "map": chosen["map"]}, "run": run_stamp()}
        json.dump(report, f, indent=1)
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    from conf_plugins.mmseg.demo_data import generate_demo_segmentation

    generate_demo_segmentation("datasets/conf_demo_seg", TINY_SEG_DATA if args.tiny else SEG_DATA_SIZES)
    demo, variants = training_stages(args.demo_output, args.output, args.tiny)
    run_stages(demo, args.demo_output, args.force)
    run_stages(variants, args.output, args.force)
    seg = os.path.join(args.demo_output, "seg")
    last, snapshot = (4, 2) if args.tiny else (600, 200)
    models = [
        ("STL", "configs/mmseg/demo/fcn_r18_stl.py", f"{seg}/stl/iter_{last}.pth", {}),
        (DEMO_VARIANT, MTL_CFG, f"{seg}/mtl/iter_{last}.pth", {}),
    ]
    models += [(name, MTL_CFG, f"{args.output}/{name}/iter_{last}.pth", TRAINING[name]) for name in TRAINING]
    sources = []
    num_classes = None
    for name, config, checkpoint, options in models:
        model, cfg = load_model(config, checkpoint, options)
        num_classes = model.decode_head.num_classes
        data = with_perturbed_calib(model, cfg, {s: pixels(model, cfg, s) for s in SPLITS}, args.tiny)
        if name == "STL":
            sources.append(("STL", data, STL_MAPS))
            mc, mc_cfg = load_model("configs/mmseg/demo/fcn_r18_stl_mc10.py", checkpoint)
            sources.append(("STL MC-10", {s: pixels(mc, mc_cfg, s) for s in SPLITS}, ("softmax",)))
            continue
        sources.append((f"{name} max-softmax", data, ("softmax",)))
        sources.append((f"{name} snapshot", data, MAPS + FUSION_MAPS))
        live = {s: pixels(model, cfg, s, live_branch=True) for s in SPLITS}
        live = with_perturbed_calib(model, cfg, live, args.tiny, live_branch=True)
        sources.append((f"{name} live", live, MAPS + FUSION_MAPS))
        for variant, balanced in (("refit", False), ("refit-balanced", True)):
            refit = refitted(model, cfg, balanced)
            sources.append((f"{name} {variant}", {s: pixels(refit, cfg, s) for s in SPLITS}, MAPS))
        if name == DEMO_VARIANT:
            early, early_cfg = load_model(config, f"{seg}/mtl/iter_{snapshot}.pth", {})
            net200 = {}
            for s in SPLITS:
                final, at200 = data[s], pixels(early, early_cfg, s, live_branch=True)
                net200[s] = {**final, "success": at200["success"]}
            sources.append((f"{DEMO_VARIANT} net@{snapshot}", net200, MAPS))
        print(f"[ablation] evaluated {name}", flush=True)
    rows = evaluate(sources, num_classes)
    chosen = choose(rows)
    print(write_report(rows, chosen, args.output))
    print(f"[ablation] chosen: {chosen['name']} / {chosen['map']}")
    return rows, chosen


if __name__ == "__main__":
    main()
