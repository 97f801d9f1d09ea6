#!/usr/bin/env python
"""Parameter and predict-latency overhead of the success branch vs the stock mmseg head.

Builds the stock Cityscapes FCN / DeepLabV3 R50-D8 models from mmseg's own configs and our
success variants (configs/mmseg/*_success_*.py, BN instead of SyncBN on CPU), and prints
parameter ratios (success branch + its frozen snapshot counted) and median predict latency
ratios side by side in one run. Not a test.

    .venv/bin/python bench/success_branch_overhead.py --size 256 512
"""
import argparse
import os
import statistics
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import torch
from mmengine.config import Config
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from mmseg.utils import register_all_modules

import conf_plugins.mmseg  # noqa: F401

PAIRS = {
    "FCN R50-D8": ("mmseg::fcn/fcn_r50-d8_4xb2-80k_cityscapes-512x1024.py",
                   "configs/mmseg/fcn_success_r50-d8_4xb2-80k_cityscapes-512x1024.py"),
    "DeepLabV3 R50-D8": ("mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-80k_cityscapes-512x1024.py",
                         "configs/mmseg/deeplabv3_success_r50-d8_4xb2-80k_cityscapes-512x1024.py"),
}


def build(path, **model_overrides):
    """The model of config ``path`` (ours, or ``mmseg::`` stock), CPU-ready, in eval mode."""
    if path.startswith("mmseg::"):  # a stock config shipped inside the mmseg package
        import mmseg

        path = os.path.join(os.path.dirname(mmseg.__file__), ".mim", "configs",
                            path[len("mmseg::"):])
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


def latency(model, size, reps):
    h, w = size
    inputs = torch.randn(1, 3, h, w)
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), padding_size=[0, 0, 0, 0])
    samples = [SegDataSample(metainfo=meta)]
    with torch.no_grad():
        model.predict(inputs, samples)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            model.predict(inputs, [SegDataSample(metainfo=meta)])
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=(256, 512))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    register_all_modules()
    print(f"input {args.size[0]}x{args.size[1]}, {args.threads} threads, median of {args.reps}")
    for name, (stock_cfg, ours_cfg) in PAIRS.items():
        torch.manual_seed(0)
        stock, ours = build(stock_cfg), build(ours_cfg)
        p_stock = sum(p.numel() for p in stock.parameters())
        p_ours = sum(p.numel() for p in ours.parameters())
        t_stock, t_ours = latency(stock, args.size, args.reps), latency(ours, args.size, args.reps)
        print(f"{name:<17} params {p_stock:>11,} -> {p_ours:>11,} (+{100 * (p_ours / p_stock - 1):.3f} %)"
              f"  predict {t_stock * 1000:7.0f} ms -> {t_ours * 1000:7.0f} ms ({t_ours / t_stock:.3f}x)")


if __name__ == "__main__":
    main()
