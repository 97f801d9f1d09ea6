#!/usr/bin/env python
"""Wall-time ratios of DDN, measured side by side in one run (not a test).

* DDN training iteration (M teacher samples) vs a plain fine-tuning iteration of the same
  Faster R-CNN (stock ROI heads, everything trainable) and vs fine-tuning with the same
  frozen backbone + RPN but no teacher (isolates the cost of the M samples);
* student inference vs baseline inference (same architecture: expected 1.00);
* MC-M inference vs baseline inference (--mc-samples, default 10; DDN's M: --samples, default
  the demo's 5).

Goals: DDN iteration <= 1.3x plain fine-tuning, MC-10 inference <= 1.2x a single pass. With
--json PATH the result is also written as a bench result for docs/generate.py.

Default model: the demo config (ResNet-18 FPN, 128 px). --config/--size for others, e.g.
    .venv/bin/python bench/ddn_speed.py --config configs/teacher_r50.yaml --size 512
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage

from conf_plugins.detectron2 import add_ddn_config
from conf_plugins.detectron2.config import merge_config_file
from conf_plugins.detectron2.demo_data import random_detection_batch
from conf_plugins.provenance import write_bench_result

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GOAL_DDN_TRAIN = 1.3  # DDN iteration / plain fine-tuning iteration, at most
GOAL_MC_INFER = 1.2  # MC-10 inference / single-pass inference, at most
WARMUP = 2


def load_cfg(path, size, device="cpu", **overrides):
    cfg = add_ddn_config(get_cfg())
    merge_config_file(cfg, path)
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = ""
    cfg.INPUT.MIN_SIZE_TEST = cfg.INPUT.MAX_SIZE_TEST = size
    cfg.SOLVER.BASE_LR = 0.0  # timing only: keep the random-init weights finite across steps
    for k, v in overrides.items():
        node = cfg
        *parents, leaf = k.split(".")
        for p in parents:
            node = getattr(node, p)
        setattr(node, leaf, v)
    return cfg


def time_it(fn, reps, warmup=WARMUP):
    """Median wall time of ``fn`` (CUDA work finished before each clock read)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def train_step(model, optimizer, batch):
    def step():
        with EventStorage():
            losses = model(batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "demo", "teacher.yaml"))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--samples", type=int, default=5, help="DDN's M (the demo's: 5)")
    parser.add_argument("--mc-samples", type=int, default=10, help="MC dropout's M (the goal's: 10)")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--json", metavar="PATH", help="also write the result as JSON (input of docs/generate.py --bench)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    teacher_cfg = load_cfg(args.config, args.size, args.device)
    teacher = build_model(teacher_cfg)
    with tempfile.TemporaryDirectory() as tmp:  # open until the timing ends: the DDN student
        # loads its teacher from this file when its first training step needs it
        DetectionCheckpointer(teacher, save_dir=tmp).save("teacher")
        weights = os.path.join(tmp, "teacher.pth")
        ddn_cfg = load_cfg(
            args.config,
            args.size,
            args.device,
            **{
                "MODEL.META_ARCHITECTURE": "DDNRCNN",
                "MODEL.ROI_HEADS.NAME": "DDNROIHeads",
                "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT": False,
                "MODEL.DDN.TEACHER_WEIGHTS": weights,
                "MODEL.DDN.NUM_SAMPLES": args.samples,
            },
        )
        student = build_model(ddn_cfg)
        frozen_cfg = load_cfg(
            args.config,
            args.size,
            args.device,
            **{"MODEL.META_ARCHITECTURE": "DDNRCNN", "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT": False},
        )
        frozen = build_model(frozen_cfg)
        mc_cfg = load_cfg(
            args.config,
            args.size,
            args.device,
            **{"MODEL.ROI_HEADS.NAME": "MCDropoutROIHeads", "MODEL.MC_DROPOUT.NUM_SAMPLES": args.mc_samples},
        )
        mc = build_model(mc_cfg)
        for m in (student, frozen, mc):
            m.load_state_dict(teacher.state_dict(), strict=False)
        batch = random_detection_batch(
            num_images=args.images, size=args.size, num_classes=teacher_cfg.MODEL.ROI_HEADS.NUM_CLASSES
        )

        train = {}
        for name, model, cfg in (
            ("plain fine-tuning", teacher, teacher_cfg),
            ("frozen backbone+RPN, no teacher", frozen, frozen_cfg),
            (f"DDN (M={args.samples})", student, ddn_cfg),
        ):
            model.train()
            train[name] = time_it(train_step(model, build_optimizer(cfg, model), batch), args.reps)
        infer = {}
        for name, model in (("baseline", teacher), ("DDN student", student), (f"MC-{args.mc_samples}", mc)):
            model.eval()
            with torch.no_grad():
                infer[name] = time_it(lambda: model(batch), args.reps)

    print(
        f"config {os.path.relpath(args.config, ROOT)}, {args.images} images of {args.size} px, "
        f"{args.threads} threads, {args.device}, median of {args.reps}"
    )
    base = train["plain fine-tuning"]
    for name, t in train.items():
        print(f"train  {name:<34} {t * 1000:8.1f} ms  ratio {t / base:.2f}x")
    ddn = train[f"DDN (M={args.samples})"]
    print(
        f"train  DDN vs frozen fine-tuning without teacher: "
        f"{ddn / train['frozen backbone+RPN, no teacher']:.2f}x"
    )
    for name, t in infer.items():
        print(f"infer  {name:<34} {t * 1000:8.1f} ms  ratio {t / infer['baseline']:.2f}x")
    if args.json:
        write_json(args, train, infer)


def verdict(ratio, goal):
    return "met" if ratio <= goal else "not met"


def write_json(args, train, infer):
    m = args.samples
    columns = ["phase", "run", "median (ms)", "ratio", "relative to"]
    rows = [
        {
            "phase": "train",
            "run": name,
            "median (ms)": round(t * 1e3, 1),
            "ratio": round(t / train["plain fine-tuning"], 3),
            "relative to": "plain fine-tuning",
        }
        for name, t in train.items()
    ]
    rows += [
        {
            "phase": "inference",
            "run": name,
            "median (ms)": round(t * 1e3, 1),
            "ratio": round(t / infer["baseline"], 3),
            "relative to": "baseline",
        }
        for name, t in infer.items()
    ]
    ddn = train[f"DDN (M={m})"]
    train_ratio = ddn / train["plain fine-tuning"]
    mc = args.mc_samples
    mc_ratio = infer[f"MC-{mc}"] / infer["baseline"]
    mc_goal = (
        f"goal ≤ {GOAL_MC_INFER}×: {verdict(mc_ratio, GOAL_MC_INFER)}"
        if mc == 10
        else f"the goal ≤ {GOAL_MC_INFER}× is stated for M = 10"
    )
    summary = [
        f"DDN (M={m}) training iteration {train_ratio:.3f}× a plain fine-tuning iteration "
        f"(goal ≤ {GOAL_DDN_TRAIN}×: {verdict(train_ratio, GOAL_DDN_TRAIN)}).",
        f"DDN vs fine-tuning with the same frozen backbone + RPN and no teacher "
        f"{ddn / train['frozen backbone+RPN, no teacher']:.3f}× (the cost of the M = {m} "
        f"teacher samples).",
        f"DDN student inference {infer['DDN student'] / infer['baseline']:.3f}× the baseline "
        f"(same architecture: 1.00× expected).",
        f"MC-{mc} inference {mc_ratio:.3f}× a single baseline pass ({mc_goal}).",
    ]
    description = (
        f"Faster R-CNN of config {os.path.relpath(args.config, ROOT)}, batch of {args.images} "
        f"random image(s) of {args.size} px, {args.threads} thread(s), {args.device.upper()}, median of "
        f"{args.reps} repetition{'s' * (args.reps != 1)} after {WARMUP} warm-up ones, all "
        f"models sharing the same random-init weights. Training times one iteration (forward, "
        f"backward, optimizer step at learning rate 0) of plain fine-tuning (stock ROI heads, "
        f"everything trainable), of fine-tuning with backbone + RPN frozen and no teacher, and "
        f"of DDN with M = {m} teacher samples; inference times one forward pass of the "
        f"baseline, of the DDN student (same architecture) and of MC dropout with M = {args.mc_samples} "
        f"samples of the ROI heads."
    )
    write_bench_result(
        args.json,
        "DDN training and MC dropout inference vs plain Faster R-CNN",
        columns,
        rows,
        summary,
        description,
        command=" ".join(["python", "bench/ddn_speed.py", *sys.argv[1:]]),
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
