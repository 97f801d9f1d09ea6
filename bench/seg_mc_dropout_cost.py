#!/usr/bin/env python
"""Predict latency of MC dropout (MCDropoutEncoderDecoder, M samples of the decode head in one
batched pass) against the stock single pass, for mmseg's own Cityscapes FCN / DeepLabV3
R50-D8 configs (BN instead of SyncBN on CPU), side by side in one run. Not a test.

    .venv/bin/python bench/seg_mc_dropout_cost.py --size 256 512 --samples 10
"""
import argparse

import torch
from mmseg.utils import register_all_modules

from success_branch_overhead import build, latency

STOCK = {
    "FCN R50-D8": "mmseg::fcn/fcn_r50-d8_4xb2-80k_cityscapes-512x1024.py",
    "DeepLabV3 R50-D8": "mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-80k_cityscapes-512x1024.py",
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=(256, 512))
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    register_all_modules()
    import conf_plugins.mmseg  # noqa: F401

    print(f"input {args.size[0]}x{args.size[1]}, {args.threads} threads, median of {args.reps}, "
          f"M = {args.samples}")
    for name, cfg in STOCK.items():
        torch.manual_seed(0)
        single = build(cfg)
        mc = build(cfg, type="MCDropoutEncoderDecoder", mc_samples=args.samples)
        mc.load_state_dict(single.state_dict())
        t_single, t_mc = latency(single, args.size, args.reps), latency(mc, args.size, args.reps)
        print(f"{name:<17} single pass {t_single * 1000:7.0f} ms, MC-{args.samples} "
              f"{t_mc * 1000:7.0f} ms ({t_mc / t_single:.2f}x)")


if __name__ == "__main__":
    main()
