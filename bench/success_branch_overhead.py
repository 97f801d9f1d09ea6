#!/usr/bin/env python
"""Parameter and predict-latency overhead of the success branch vs the stock mmseg head.

Builds the stock Cityscapes FCN / DeepLabV3 R50-D8 models from mmseg's own configs and our
success variants (configs/mmseg/*_success_*.py, BN instead of SyncBN on CPU), and prints
parameter ratios (success branch + its frozen snapshot counted) and median predict latency
ratios side by side in one run. Goals: <= 0.1 % more parameters, <= 1.05x the latency. With
--json PATH the result is also written as a bench result for docs/generate.py. Not a test.

    .venv/bin/python bench/success_branch_overhead.py --size 256 512 [--json PATH]
"""

import argparse
import os
import statistics
import sys
import time

import torch
from mmengine.config import Config
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from mmseg.utils import register_all_modules

import conf_plugins.mmseg  # noqa: F401
from conf_plugins.provenance import write_bench_result

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GOAL_PARAMS_PERCENT = 0.1  # extra parameters of the success variant, % of the stock model, at most
GOAL_LATENCY = 1.05  # predict latency success variant / stock, at most

PAIRS = {
    "FCN R50-D8": (
        "mmseg::fcn/fcn_r50-d8_4xb2-80k_cityscapes-512x1024.py",
        "configs/mmseg/fcn_success_r50-d8_4xb2-80k_cityscapes-512x1024.py",
    ),
    "DeepLabV3 R50-D8": (
        "mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-80k_cityscapes-512x1024.py",
        "configs/mmseg/deeplabv3_success_r50-d8_4xb2-80k_cityscapes-512x1024.py",
    ),
}


def build(path, **model_overrides):
    """The model of config ``path`` (ours, or ``mmseg::`` stock), CPU-ready, in eval mode."""
    if path.startswith("mmseg::"):  # a stock config shipped inside the mmseg package
        import mmseg

        path = os.path.join(os.path.dirname(mmseg.__file__), ".mim", "configs", path[len("mmseg::") :])
    else:
        path = os.path.join(ROOT, path)
    cfg = Config.fromfile(path)
    cfg.model.pretrained = None
    cfg.model.backbone.norm_cfg = dict(type="BN", requires_grad=True)
    for head in ("decode_head", "auxiliary_head"):
        if cfg.model.get(head):
            cfg.model[head].norm_cfg = dict(type="BN", requires_grad=True)
    cfg.model.auxiliary_head = None  # not used at inference
    cfg.model.update(model_overrides)
    return MODELS.build(cfg.model).eval()


def latency(model, size, reps, device="cpu"):
    """Median predict latency of ``model`` (moved to ``device``) on one h×w input."""
    h, w = size
    model = model.to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    inputs = torch.randn(1, 3, h, w, device=device)
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), padding_size=[0, 0, 0, 0])
    samples = [SegDataSample(metainfo=meta)]
    with torch.no_grad():
        model.predict(inputs, samples)
        times = []
        for _ in range(reps):
            sync()
            t = time.perf_counter()
            model.predict(inputs, [SegDataSample(metainfo=meta)])
            sync()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=(256, 512))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--json", metavar="PATH", help="also write the result as JSON (input of docs/generate.py --bench)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    register_all_modules()
    print(f"input {args.size[0]}x{args.size[1]}, {args.threads} threads, median of {args.reps}")
    measured = {}
    for name, (stock_cfg, ours_cfg) in PAIRS.items():
        torch.manual_seed(0)
        stock, ours = build(stock_cfg), build(ours_cfg)
        p_stock = sum(p.numel() for p in stock.parameters())
        p_ours = sum(p.numel() for p in ours.parameters())
        t_stock, t_ours = latency(stock, args.size, args.reps), latency(ours, args.size, args.reps)
        print(
            f"{name:<17} params {p_stock:>11,} -> {p_ours:>11,} (+{100 * (p_ours / p_stock - 1):.3f} %)"
            f"  predict {t_stock * 1000:7.0f} ms -> {t_ours * 1000:7.0f} ms ({t_ours / t_stock:.3f}x)"
        )
        measured[name] = p_stock, p_ours, t_stock, t_ours
    if args.json:
        write_json(args, measured)


def write_json(args, measured):
    columns = [
        "model",
        "params stock",
        "params success",
        "extra params (%)",
        "predict stock (ms)",
        "predict success (ms)",
        "latency ratio",
    ]
    rows, summary = [], []
    for name, (p_stock, p_ours, t_stock, t_ours) in measured.items():
        extra, ratio = 100 * (p_ours / p_stock - 1), t_ours / t_stock
        rows.append(
            {
                "model": name,
                "params stock": p_stock,
                "params success": p_ours,
                "extra params (%)": round(extra, 4),
                "predict stock (ms)": round(t_stock * 1e3, 1),
                "predict success (ms)": round(t_ours * 1e3, 1),
                "latency ratio": round(ratio, 3),
            }
        )
        summary.append(
            f"{name}: success branch +{extra:.4f} % parameters (goal ≤ {GOAL_PARAMS_PERCENT} %: "
            f"{'met' if extra <= GOAL_PARAMS_PERCENT else 'not met'}), predict latency {ratio:.3f}× "
            f"the stock model (goal ≤ {GOAL_LATENCY}×: {'met' if ratio <= GOAL_LATENCY else 'not met'})."
        )
    h, w = args.size
    description = (
        f"Input {h}×{w}, {args.threads} thread(s), CPU, median of {args.reps} predict "
        f"call{'s' * (args.reps != 1)} after one warm-up, random weights. Stock: mmseg's own "
        f"Cityscapes FCN / DeepLabV3 R50-D8 configs; success: our configs/mmseg/*_success_* "
        f"variants of the same models (the success branch and its frozen snapshot counted in "
        f"the parameters); BN instead of SyncBN and no auxiliary head in both."
    )
    write_bench_result(
        args.json,
        "Success branch vs the stock mmseg model",
        columns,
        rows,
        summary,
        description,
        command=" ".join(["python", "bench/success_branch_overhead.py", *sys.argv[1:]]),
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
