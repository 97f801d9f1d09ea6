#!/usr/bin/env python
"""The main job: the whole pipeline on the built-in demo data, ending in a report.

    make demo                      # = python demo/run_demo.py (in the activated .venv)
    python demo/run_demo.py --force      # re-run every stage
    python demo/run_demo.py --only seg   # one half

Detection: dropout teacher -> baseline / MC-10 evaluation -> DDN student -> evaluation;
temperature / isotonic score calibrators fitted on the calib split -> evaluation.
Segmentation: STL and MTL training -> temperature scaling / Bayes binning on the calib split
-> STL / STL-scaled / MTL (probability of success) / MTL's own max softmax / MC-10 dropout
(of the STL model) evaluation in-domain (val) and off-domain (val_shifted).
Every stage is a documented command (tools/train_net.py, tools/seg_*.py, ...) run as a
subprocess with the frameworks' own progress logging; a stage whose command, configs,
upstream stages, code (the tool it runs, the framework-free subpackages, the adapter of its
framework) and pinned environment are unchanged since its last successful run is skipped
(cache key: a hash of those), unless --force: a change to conf_plugins/mmseg re-runs the
segmentation stages and leaves detection cached. The report (report.md + PNGs) lists each stage's command.
"""

import argparse
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --tiny: a few images and iterations, for the pipeline's own test (numbers meaningless)
TINY_DET = [
    "SOLVER.MAX_ITER",
    "4",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.WARMUP_ITERS",
    "1",
    "SOLVER.STEPS",
    "(3,)",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "0.0",
    "MODEL.RETINANET.SCORE_THRESH_TEST",
    "0.0",
]
TINY_SEG = [
    "train_cfg.max_iters=4",
    "param_scheduler.0.end=4",
    "train_dataloader.batch_size=2",
    "default_hooks.checkpoint.interval=4",
    "train_cfg.val_interval=1000",
]
TINY_SNAPSHOT = ["custom_hooks.0.snapshot_iter=2", "default_hooks.checkpoint.interval=2"]
TINY_SEG_DATA = {"train": 4, "calib": 9, "val": 2, "val_shifted": 2}  # calib: risk control at 0.1
SEG_DATA_SIZES = {"train": 80, "calib": 20, "val": 24, "val_shifted": 24}
RISK_ALPHA = 0.05  # risk-controlled selective segmentation of the STL: needs >= 19 calib images
TINY_RISK_ALPHA = 0.1  # tiny calib: 9 images
# calibrators also fitted on calib + its copies under the protocol's held-out corruptions
PERTURB = ["--perturb", "held_out", "--perturb-severities", "1", "3", "5"]
TINY_PERTURB = ["--perturb", "speckle_noise", "--perturb-severities", "5"]


DET_DATA = "conf_plugins/detectron2/demo_data.py"  # the generators: data changes re-run stages
SEG_DATA = "conf_plugins/mmseg/demo_data.py"
# code every stage runs, beside its tool and its framework's adapter; the pinned environment
SHARED_SOURCES = (
    "conf_plugins/__init__.py",
    "conf_plugins/calibration",
    "conf_plugins/losses",
    "conf_plugins/compat",
    "conf_plugins/distributed.py",
    "conf_plugins/files.py",
    "requirements",
    "tools/env/bootstrap.sh",
)


def source_files(paths):
    """The .py / requirement files under ``paths`` (files or folders of ROOT), sorted."""
    files = []
    for rel in paths:
        path = os.path.join(ROOT, rel)
        if os.path.isfile(path):
            files.append(path)
        for folder, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            files += [
                os.path.join(folder, n) for n in sorted(names) if n.endswith((".py", ".txt", ".sh", ".in"))
            ]
    return files


class Stage:
    """One step of the pipeline: a command, the config (and data-generator) files it reads,
    the stages it depends on."""

    def __init__(self, name, cmd, configs=(), needs=(), output=None, root=None):
        self.name, self.cmd, self.configs, self.needs, self.output = name, cmd, configs, needs, output
        self.root = root  # the output folder of its seed (None: the main one)

    def sources(self):
        """The code this stage runs: its tool scripts, the shared subpackages and the adapter
        of its framework (mmseg for configs/mmseg, detectron2 otherwise)."""
        tools = [
            os.path.relpath(c, ROOT)
            for c in self.cmd
            if c.endswith(".py") and os.path.dirname(c) == os.path.join(ROOT, "tools")
        ]
        seg = any(c.startswith("configs/mmseg") for c in self.configs)
        adapter = "conf_plugins/mmseg" if seg else "conf_plugins/detectron2"
        return source_files([*tools, *SHARED_SOURCES, adapter])

    def key(self, done):
        h = hashlib.sha256(json.dumps(self.cmd).encode())
        files = [p for cfg in self.configs for p in config_chain(os.path.join(ROOT, cfg))]
        for path in files + self.sources():
            h.update(os.path.relpath(path, ROOT).encode())
            with open(path, "rb") as f:
                h.update(f.read())
        for upstream in self.needs:
            h.update(done[upstream].encode())
        return h.hexdigest()[:16]


def config_chain(path):
    """A config file and the files of ours it inherits from (``_BASE_`` / ``_base_``); stock
    framework configs (``model_zoo:``, ``mmseg::``) are fixed by the pinned versions."""
    with open(path) as f:
        text = f.read()
    bases = re.findall(r"_BASE_:\s*\"([^\"]+)\"", text)
    listed = re.search(r"_base_\s*=\s*\[([^\]]*)\]", text)
    bases += re.findall(r"'([^']+)'", listed.group(1)) if listed else []
    chain = [path]
    for base in bases:
        if "::" not in base and not base.startswith("model_zoo:"):
            chain += config_chain(os.path.normpath(os.path.join(os.path.dirname(path), base)))
    return chain


# the demo's shift grid: one corruption per family (noise, blur, weather, digital), severities 1-5
SHIFT_CORRUPTIONS = "gaussian_noise,defocus_blur,fog,jpeg_compression"


def shift_grid(tiny):
    if tiny:
        return ["--corruptions", "gaussian_noise", "--severities", "5"]
    return ["--corruptions", SHIFT_CORRUPTIONS, "--severities", "1", "2", "3", "4", "5"]


def tool(name):
    return [sys.executable, os.path.join(ROOT, "tools", name)]


def detection_stages(out, tiny):
    det = os.path.join(out, "det")
    teacher, ddn = f"{det}/teacher/model_final.pth", f"{det}/ddn/model_final.pth"
    extra = TINY_DET if tiny else []
    train = tool("train_net.py")
    t_cfg, d_cfg = ("configs/demo/teacher.yaml", DET_DATA), ("configs/demo/ddn.yaml", DET_DATA)
    cfg = lambda c: ["--config-file", os.path.join(ROOT, c[0])]  # noqa: E731
    stages = [
        Stage(
            "det_teacher",
            train + cfg(t_cfg) + ["OUTPUT_DIR", f"{det}/teacher"] + extra,
            t_cfg,
            output=teacher,
        ),
        Stage(
            "det_baseline",
            train
            + cfg(t_cfg)
            + ["--eval-only", "MODEL.WEIGHTS", teacher, "OUTPUT_DIR", f"{det}/baseline"]
            + extra,
            t_cfg,
            ["det_teacher"],
        ),
        Stage(
            "det_mc10",
            train
            + cfg(t_cfg)
            + [
                "--eval-only",
                "MODEL.WEIGHTS",
                teacher,
                "MODEL.ROI_HEADS.NAME",
                "MCDropoutROIHeads",
                "MODEL.MC_DROPOUT.NUM_SAMPLES",
                "10",
                "OUTPUT_DIR",
                f"{det}/mc10",
            ]
            + extra,
            t_cfg,
            ["det_teacher"],
        ),
        Stage(
            "det_ddn",
            train
            + cfg(d_cfg)
            + ["MODEL.WEIGHTS", teacher, "MODEL.DDN.TEACHER_WEIGHTS", teacher, "OUTPUT_DIR", f"{det}/ddn"]
            + extra,
            d_cfg,
            ["det_teacher"],
            output=ddn,
        ),
        Stage(
            "det_ddn_eval",
            train + cfg(d_cfg) + ["--eval-only", "MODEL.WEIGHTS", ddn, "OUTPUT_DIR", f"{det}/ddn"] + extra,
            d_cfg,
            ["det_ddn"],
        ),
    ]
    # score calibrators fitted on the held-out calib split, evaluated on val
    for model, weights, c, method, needs in (
        ("baseline", teacher, t_cfg, "temperature", "det_teacher"),
        ("baseline", teacher, t_cfg, "isotonic", "det_teacher"),
        ("ddn", ddn, d_cfg, "temperature", "det_ddn"),
    ):
        stages += calibration_stages(
            (f"det_fit_{model}_{method}", f"det_{model}_{method}_eval"),
            c,
            weights,
            method,
            needs,
            weights.replace(".pth", f"_{method}.pth"),
            f"{det}/{model}_{method}",
            fit_args=[],
            eval_args=[],
            extra=extra,
        )
    stages += protocol_stages(det, teacher, ddn, t_cfg, d_cfg, extra, tiny)
    # calibration under corruption: the Baseline, its isotonic calibration and DDN
    shift = tool("shift_benchmark.py")
    calibrated = teacher.replace(".pth", "_isotonic.pth")
    for name, weights, c, opts, needs in (
        ("baseline", teacher, t_cfg, [], "det_teacher"),
        (
            "baseline_isotonic",
            calibrated,
            t_cfg,
            ["MODEL.CALIBRATION.METHOD", "isotonic"],
            "det_fit_baseline_isotonic",
        ),
        ("ddn", ddn, d_cfg, [], "det_ddn"),
    ):
        stages.append(
            Stage(
                f"det_shift_{name}",
                shift
                + [
                    os.path.join(ROOT, c[0]),
                    weights,
                    *shift_grid(tiny),
                    "--output",
                    f"{out}/shift/det_{name}",
                    "--force",
                    "TEST.CALIBRATION.BOOTSTRAP",
                    "0",
                    *opts,
                    *extra,
                ],
                c,
                [needs],
            )
        )
    return stages


PROTOCOL_METHODS = ("temperature", "platt", "linear", "histogram", "isotonic")
MC10 = [
    "MODEL.ROI_HEADS.NAME",
    "MCDropoutROIHeads",
    "MODEL.MC_DROPOUT.NUM_SAMPLES",
    "10",
    "MODEL.MC_DROPOUT.OUTPUT_UNCERTAINTY",
    "True",  # pred_box_std: the 'std' box intervals
]


def box_intervals(score, correction):
    return [
        "MODEL.CALIBRATION.BOX_CONFORMAL.SCORE",
        score,
        "MODEL.CALIBRATION.BOX_CONFORMAL.CORRECTION",
        correction,
    ]


# a tiny run's model has hardly a true positive: thresholds at 0 (nothing dropped), one box
# interval at α = 0.9 on matches at IoU 0.1; the calibrators are covered by the tests
TINY_PROTOCOL = ["MODEL.CALIBRATION.THRESHOLD_BINS", "1"]
TINY_BOX = ["MODEL.CALIBRATION.BOX_CONFORMAL.ALPHA", "0.9", "MODEL.CALIBRATION.IOU", "0.1"]


def protocol_variants(model, tiny=False):
    """(name, method, target, extra options) of one model in the protocol table."""
    variants = [("identity", "identity", "hit", [])]
    if tiny:
        return variants + (
            [
                (
                    "identity_additive_max_rank",
                    "identity",
                    "hit",
                    box_intervals("additive", "max_rank") + TINY_BOX,
                )
            ]
            if model == "baseline"
            else []
        )
    if model in ("baseline", "ddn"):
        variants += [(f"{m}_{t}", m, t, []) for m in PROTOCOL_METHODS for t in ("hit", "iou")]
    scores = {"baseline": ("additive", "normalised"), "mc10": ("std",)}.get(model, ())
    variants += [
        (f"identity_{s}_{c}", "identity", "hit", box_intervals(s, c))
        for s in scores
        for c in ("bonferroni", "max_rank")
    ]
    return variants


def calibration_stages(names, config, weights, method, needs, checkpoint, folder, fit_args, eval_args, extra):
    """(fit, evaluation) stages named ``names``: ``method`` fitted on calib for ``weights``
    into ``checkpoint`` (with ``fit_args``), then that checkpoint evaluated on val into
    ``folder`` (with ``eval_args``); ``extra`` are the tiny run's overrides."""
    cfg = ["--config-file", os.path.join(ROOT, config[0])]
    fit_name, eval_name = names
    return [
        Stage(
            fit_name,
            tool("fit_detection_calibration.py")
            + cfg
            + ["--dataset", "conf_demo_det_calib", "--output", checkpoint, "--force"]
            + ["MODEL.WEIGHTS", weights, "MODEL.CALIBRATION.METHOD", method, *fit_args, *extra],
            config,
            [needs],
            output=checkpoint,
        ),
        Stage(
            eval_name,
            tool("train_net.py")
            + cfg
            + ["--eval-only", "MODEL.WEIGHTS", checkpoint, "OUTPUT_DIR", folder]
            + ["MODEL.CALIBRATION.METHOD", method, *eval_args, *extra],
            config,
            [fit_name],
        ),
    ]


def protocol_stages(det, teacher, ddn, t_cfg, d_cfg, extra, tiny=False):
    """The protocol of Kuzucu et al. (ECCV 2024) on the demo (seed 0 only): per model
    (Baseline, MC-10, DDN and the same fine-tuning without the teacher) and calibrator x
    target, fit on calib with per-class LRP-optimal operating thresholds (and conformal box
    intervals, α = 0.1), evaluate on val at those thresholds; outputs under det/protocol."""
    train = tool("train_net.py")
    cfg = lambda c: ["--config-file", os.path.join(ROOT, c[0])]  # noqa: E731
    control = f"{det}/control/model_final.pth"
    stages = [
        Stage(  # λ = 0: the DDN fine-tuning without its teacher (the control of the DDN study)
            "det_protocol_control",
            train
            + cfg(d_cfg)
            + [
                "MODEL.WEIGHTS",
                teacher,
                "MODEL.DDN.TEACHER_WEIGHTS",
                teacher,
                "MODEL.DDN.DISTILL_WEIGHT",
                "0.0",
            ]
            + ["OUTPUT_DIR", f"{det}/control"]
            + extra,
            d_cfg,
            ["det_teacher"],
            output=control,
        )
    ]
    models = (
        ("baseline", teacher, t_cfg, [], "det_teacher"),
        ("mc10", teacher, t_cfg, MC10, "det_teacher"),
        ("ddn", ddn, d_cfg, [], "det_ddn"),
        ("control", control, d_cfg, [], "det_protocol_control"),
    )
    for model, weights, c, opts, needs in models:
        for variant, method, target, box in protocol_variants(model, tiny):
            name = f"{model}_{variant}"
            folder = f"{det}/protocol/{name}"
            settings = ["MODEL.CALIBRATION.TARGET", target, *opts, *box]
            settings += TINY_PROTOCOL if tiny else []
            stages += calibration_stages(
                (f"det_protocol_fit_{name}", f"det_protocol_{name}"),
                c,
                weights,
                method,
                needs,
                f"{folder}/model.pth",
                folder,
                fit_args=settings,
                eval_args=[
                    *settings,
                    "MODEL.CALIBRATION.OPERATING_THRESHOLDS",
                    "True",
                    "TEST.CALIBRATION.IOU_THRESHOLDS",
                    "(0.5,)",
                ],
                extra=extra,
            )
    return stages


def segmentation_stages(out, tiny):
    seg = os.path.join(out, "seg")
    stl_cfg, mtl_cfg = "configs/mmseg/demo/fcn_r18_stl.py", "configs/mmseg/demo/fcn_r18_mtl.py"
    mc_cfg = "configs/mmseg/demo/fcn_r18_stl_mc10.py"
    selective_cfg, lts_cfg = (
        "configs/mmseg/demo/fcn_r18_stl_selective.py",
        "configs/mmseg/demo/fcn_r18_stl_lts.py",
    )
    mtl_selective_cfg = "configs/mmseg/demo/fcn_r18_mtl_selective.py"
    lts_image_cfg = "configs/mmseg/demo/fcn_r18_stl_lts_image.py"
    image_t_cfg = "configs/mmseg/demo/fcn_r18_stl_image_temperature.py"
    extra = TINY_SEG if tiny else []
    perturb = TINY_PERTURB if tiny else PERTURB
    iters = 4 if tiny else None
    snapshot = TINY_SNAPSHOT if tiny else []

    def checkpoint(name):
        return f"{seg}/{name}/iter_{iters}.pth" if iters else f"{seg}/{name}/iter_600.pth"

    stages = [
        Stage(
            "seg_stl",
            tool("seg_train.py")
            + [os.path.join(ROOT, stl_cfg), "--work-dir", f"{seg}/stl"]
            + (["--cfg-options", *extra] if extra else []),
            [stl_cfg, SEG_DATA],
            output=checkpoint("stl"),
        ),
        Stage(
            "seg_mtl",
            tool("seg_train.py")
            + [os.path.join(ROOT, mtl_cfg), "--work-dir", f"{seg}/mtl"]
            + (["--cfg-options", *extra, *snapshot] if extra else []),
            [mtl_cfg, SEG_DATA],
            output=checkpoint("mtl"),
        ),
        Stage(
            "seg_temperature",
            tool("fit_calibration.py") + [os.path.join(ROOT, stl_cfg), checkpoint("stl"), "--force"],
            [stl_cfg, SEG_DATA],
            ["seg_stl"],
        ),
        Stage(
            "seg_pos",
            tool("fit_calibration.py") + [os.path.join(ROOT, mtl_cfg), checkpoint("mtl"), "--force"],
            [mtl_cfg, SEG_DATA],
            ["seg_mtl"],
        ),
        Stage(
            "seg_temperature_perturbed",
            tool("fit_calibration.py")
            + [os.path.join(ROOT, stl_cfg), checkpoint("stl"), "--work-dir", f"{seg}/stl/perturbed"]
            + ["--force", *perturb],
            [stl_cfg, SEG_DATA],
            ["seg_stl"],
        ),
        Stage(
            "seg_risk",
            tool("fit_calibration.py")
            + [
                os.path.join(ROOT, stl_cfg),
                checkpoint("stl"),
                "--risk-control",
                str(TINY_RISK_ALPHA if tiny else RISK_ALPHA),
            ]
            + ["--work-dir", f"{seg}/risk", "--force"],
            [stl_cfg, SEG_DATA],
            ["seg_stl"],
        ),
    ]
    pos_ckpt = checkpoint("mtl").replace(".pth", "_fusion.pth")  # the MTL config's pos_map
    pos_perturbed_ckpt = checkpoint("mtl").replace(".pth", "_fusion_perturbed.pth")
    stages.append(
        Stage(
            "seg_pos_perturbed",
            tool("fit_calibration.py")
            + [os.path.join(ROOT, mtl_cfg), checkpoint("mtl"), "--force", "--output", pos_perturbed_ckpt]
            + perturb,
            [mtl_cfg, SEG_DATA],
            ["seg_mtl"],
        )
    )
    pixel_ckpts = {  # per-pixel calibrators held by the model, fitted on calib (+ perturbed)
        "stl_selective": (selective_cfg, checkpoint("stl"), "seg_stl", "_selective_scaling.pth", []),
        "stl_lts": (lts_cfg, checkpoint("stl"), "seg_stl", "_local_temperature.pth", []),
        "mtl_selective": (mtl_selective_cfg, pos_ckpt, "seg_pos", "_selective_scaling.pth", []),
        "stl_selective_perturbed": (
            selective_cfg,
            checkpoint("stl"),
            "seg_stl",
            "_selective_scaling_perturbed.pth",
            perturb,
        ),
        "stl_lts_image": (lts_image_cfg, checkpoint("stl"), "seg_stl", "_local_temperature_image.pth", []),
        "stl_lts_image_perturbed": (
            lts_image_cfg,
            checkpoint("stl"),
            "seg_stl",
            "_local_temperature_image_perturbed.pth",
            perturb,
        ),
        "stl_image_temperature": (image_t_cfg, checkpoint("stl"), "seg_stl", "_image_temperature.pth", []),
        "stl_image_temperature_perturbed": (
            image_t_cfg,
            checkpoint("stl"),
            "seg_stl",
            "_image_temperature_perturbed.pth",
            perturb,
        ),
    }
    for name, (cfg, ckpt, needs, suffix, fit_args) in pixel_ckpts.items():
        output = ["--output", ckpt.replace(".pth", suffix)] if fit_args else []
        stages.append(
            Stage(
                f"seg_fit_{name}",
                tool("fit_calibration.py") + [os.path.join(ROOT, cfg), ckpt, "--force", *output, *fit_args],
                [cfg, SEG_DATA],
                [needs],
            )
        )
    max_softmax = ["test_evaluator.1.confidence=max_softmax"]
    pixel_rows = [
        (name, cfg, ckpt.replace(".pth", suffix), f"seg_fit_{name}", max_softmax)
        for name, (cfg, ckpt, _, suffix, _) in pixel_ckpts.items()
    ]
    risk = [f"test_evaluator.1.risk_control={seg}/risk/risk_control.json"]
    perturbed_temperature = ["test_evaluator.1.temperature=@temperature_perturbed"]
    for split in ("val", "val_shifted"):
        data = [
            f"test_dataloader.dataset.data_prefix.img_path=leftImg8bit/{split}",
            f"test_dataloader.dataset.data_prefix.seg_map_path=gtFine/{split}",
        ]
        for method, cfg, ckpt, needs, conf in (
            ("stl", stl_cfg, checkpoint("stl"), "seg_risk", [*max_softmax, *risk]),
            ("stl_scaled", stl_cfg, checkpoint("stl"), "seg_temperature", None),
            (
                "stl_scaled_perturbed",
                stl_cfg,
                checkpoint("stl"),
                "seg_temperature_perturbed",
                perturbed_temperature,
            ),
            ("mtl", mtl_cfg, pos_ckpt, "seg_pos", ["test_evaluator.1.confidence=pred_confidence"]),
            (
                "mtl_perturbed",
                mtl_cfg,
                pos_perturbed_ckpt,
                "seg_pos_perturbed",
                ["test_evaluator.1.confidence=pred_confidence"],
            ),
            # the free baseline of the same network: MTL's own max softmax
            (
                "mtl_softmax",
                mtl_cfg,
                checkpoint("mtl"),
                "seg_mtl",
                ["test_evaluator.1.confidence=max_softmax"],
            ),
            # MC dropout of the STL model's decode head: mean softmax of 10 samples
            ("stl_mc10", mc_cfg, checkpoint("stl"), "seg_stl", ["test_evaluator.1.confidence=max_softmax"]),
            *pixel_rows,
        ):
            folder = f"{seg}/eval/{method}_{split}"
            if conf is None:  # filled in from the fitted temperature when the stage runs
                conf = ["test_evaluator.1.temperature=@temperature"]
            stages.append(
                Stage(
                    f"seg_eval_{method}_{split}",
                    tool("seg_test.py")
                    + [
                        os.path.join(ROOT, cfg),
                        ckpt,
                        "--work-dir",
                        folder,
                        "--out",
                        f"{folder}/metrics.json",
                        "--cfg-options",
                        *data,
                        *conf,
                        f"test_evaluator.1.output_dir={folder}",
                    ],
                    [cfg, SEG_DATA],
                    [needs],
                )
            )
    # calibration under corruption (of the in-domain val images): every row of the table
    for name, cfg, ckpt, needs, conf in (
        ("stl", stl_cfg, checkpoint("stl"), "seg_stl", "test_evaluator.1.confidence=max_softmax"),
        (
            "stl_scaled",
            stl_cfg,
            checkpoint("stl"),
            "seg_temperature",
            "test_evaluator.1.temperature=@temperature",
        ),
        (
            "stl_scaled_perturbed",
            stl_cfg,
            checkpoint("stl"),
            "seg_temperature_perturbed",
            perturbed_temperature[0],
        ),
        ("mtl", mtl_cfg, pos_ckpt, "seg_pos", "test_evaluator.1.confidence=pred_confidence"),
        (
            "mtl_perturbed",
            mtl_cfg,
            pos_perturbed_ckpt,
            "seg_pos_perturbed",
            "test_evaluator.1.confidence=pred_confidence",
        ),
        ("mtl_softmax", mtl_cfg, checkpoint("mtl"), "seg_mtl", "test_evaluator.1.confidence=max_softmax"),
        ("stl_mc10", mc_cfg, checkpoint("stl"), "seg_stl", "test_evaluator.1.confidence=max_softmax"),
        *[(name, cfg, ckpt, needs, conf[0]) for name, cfg, ckpt, needs, conf in pixel_rows],
    ):
        stages.append(
            Stage(
                f"seg_shift_{name}",
                tool("shift_benchmark.py")
                + [
                    os.path.join(ROOT, cfg),
                    ckpt,
                    *shift_grid(tiny),
                    "--output",
                    f"{out}/shift/seg_{name}",
                    "--force",
                    "--cfg-options",
                    conf,
                    "test_evaluator.1.bootstrap=0",
                ],
                [cfg, SEG_DATA],
                [needs],
            )
        )
    return stages


def seed_root(out, seed):
    """Seed 0 is the main run (``out``); further training seeds go to ``out/seeds/<seed>``."""
    return out if seed == 0 else os.path.join(out, "seeds", str(seed))


def with_seed(stages, out, seed):
    """The stages of another training seed: renamed ``<stage>@seed<s>``, trainings told the
    seed (detectron2 ``SEED``, mmengine ``randomness.seed``), the shift grid and the
    detection protocol left to seed 0."""
    if seed == 0:
        return stages
    out_stages = []
    for stage in stages:
        if "_shift_" in stage.name or "_protocol_" in stage.name:
            continue
        cmd = list(stage.cmd)
        if any(c.endswith(("train_net.py", "fit_detection_calibration.py")) for c in cmd):
            cmd += ["SEED", str(seed)]
        elif any(c.endswith("seg_train.py") for c in cmd):
            cmd += ["--cfg-options", f"randomness.seed={seed}"]
        out_stages.append(
            Stage(
                f"{stage.name}@seed{seed}",
                cmd,
                stage.configs,
                [f"{n}@seed{seed}" for n in stage.needs],
                stage.output,
                root=seed_root(out, seed),
            )
        )
    return out_stages


# placeholders for values known only after upstream stages ran: the fitted temperatures
FITTED_TEMPERATURES = {
    "@temperature_perturbed": ("seg", "stl", "perturbed", "temperature.json"),
    "@temperature": ("seg", "stl", "temperature.json"),
}


def resolve(cmd, out):
    """``cmd`` with each placeholder of FITTED_TEMPERATURES replaced by its fitted value."""
    for placeholder, path in FITTED_TEMPERATURES.items():
        if any(placeholder in c for c in cmd):
            with open(os.path.join(out, *path)) as f:
                t = json.load(f)["temperature"]
            cmd = [c.replace(placeholder, f"{t:.6f}") for c in cmd]
    return cmd


def run_stages(stages, out, force):
    state_file = os.path.join(out, "stages.json")
    done = json.load(open(state_file)) if os.path.exists(state_file) else {}
    record = {}
    for stage in stages:
        key = stage.key({**done, **{k: v["key"] for k, v in record.items()}})
        previous = done.get(stage.name)
        fresh = previous and previous["key"] == key and (stage.output is None or os.path.exists(stage.output))
        if fresh and not force:
            print(f"[demo] {stage.name}: up to date, skipped (--force re-runs it)", flush=True)
            record[stage.name] = previous
            continue
        cmd = resolve(stage.cmd, stage.root or out)
        print(f"[demo] {stage.name}: {shlex.join(cmd)}", flush=True)
        start = time.time()
        subprocess.run(cmd, check=True)
        record[stage.name] = {
            "key": key,
            "seconds": round(time.time() - start, 1),
            "command": shlex.join(cmd),
        }
        done[stage.name] = record[stage.name]
        os.makedirs(out, exist_ok=True)
        with open(state_file, "w") as f:
            json.dump({**done, **{k: v for k, v in record.items()}}, f, indent=1)
    return record


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="output/demo")
    parser.add_argument("--only", choices=["det", "seg"])
    parser.add_argument("--force", action="store_true", help="re-run every stage")
    parser.add_argument("--tiny", action="store_true", help="a few images and iterations")
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="training seeds 0..N-1 (default 1); the report adds mean ± std over seeds",
    )
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    from conf_plugins.detectron2.demo_data import DEFAULT_SIZES, generate_demo_detection
    from conf_plugins.mmseg.demo_data import generate_demo_segmentation

    root = os.environ.get("DETECTRON2_DATASETS", "datasets")
    start = time.time()
    stages = []
    if args.only in (None, "det"):
        generate_demo_detection(
            os.path.join(root, "conf_demo_det"),
            {"train": 8, "calib": 4, "val": 4} if args.tiny else DEFAULT_SIZES,
        )
        for seed in range(args.seeds):
            stages += with_seed(detection_stages(seed_root(args.output, seed), args.tiny), args.output, seed)
    if args.only in (None, "seg"):
        generate_demo_segmentation("datasets/conf_demo_seg", TINY_SEG_DATA if args.tiny else SEG_DATA_SIZES)
        for seed in range(args.seeds):
            stages += with_seed(
                segmentation_stages(seed_root(args.output, seed), args.tiny), args.output, seed
            )
    record = run_stages(stages, args.output, args.force)
    from demo_report import write_report

    command = " ".join(["python demo/run_demo.py", *(argv if argv is not None else sys.argv[1:])])
    seeds = [seed_root(args.output, s) for s in range(args.seeds)]
    report = write_report(args.output, record, tiny=args.tiny, command=command, seed_roots=seeds)
    print(f"[demo] done in {time.time() - start:.0f} s; report: {report}", flush=True)
    return report


if __name__ == "__main__":
    main()
