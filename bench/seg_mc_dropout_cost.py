#!/usr/bin/env python
"""Predict latency of MC dropout (MCDropoutEncoderDecoder, M samples of the decode head in one
batched pass) against the stock single pass, for mmseg's own Cityscapes FCN / DeepLabV3
R50-D8 configs (BN instead of SyncBN on CPU), side by side in one run. Goal: MC-10 <= 1.2x the
single pass. With --json PATH the result is also written as a bench result for
docs/generate.py. Not a test.

    .venv/bin/python bench/seg_mc_dropout_cost.py --size 256 512 --samples 10 [--json PATH]
"""

import argparse
import sys

import torch
from mmseg.utils import register_all_modules
from success_branch_overhead import build, latency

from conf_plugins.provenance import write_bench_result

GOAL = 1.2  # MC-10 predict latency / single pass, at most

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
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--json", metavar="PATH", help="also write the result as JSON (input of docs/generate.py --bench)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    register_all_modules()
    import conf_plugins.mmseg  # noqa: F401

    print(
        f"input {args.size[0]}x{args.size[1]}, {args.threads} threads, {args.device}, median of {args.reps}, "
        f"M = {args.samples}"
    )
    times = {}
    for name, cfg in STOCK.items():
        torch.manual_seed(0)
        single = build(cfg)
        mc = build(cfg, type="MCDropoutEncoderDecoder", mc_samples=args.samples)
        mc.load_state_dict(single.state_dict())
        t_single = latency(single, args.size, args.reps, args.device)
        t_mc = latency(mc, args.size, args.reps, args.device)
        print(
            f"{name:<17} single pass {t_single * 1000:7.0f} ms, MC-{args.samples} "
            f"{t_mc * 1000:7.0f} ms ({t_mc / t_single:.2f}x)"
        )
        times[name] = t_single, t_mc
    if args.json:
        write_json(args, times)


def write_json(args, times):
    m = args.samples
    mc_column = f"MC-{m} (ms)"
    columns = ["model", "single pass (ms)", mc_column, "ratio"]
    rows = [
        {
            "model": name,
            "single pass (ms)": round(t_single * 1e3, 1),
            mc_column: round(t_mc * 1e3, 1),
            "ratio": round(t_mc / t_single, 3),
        }
        for name, (t_single, t_mc) in times.items()
    ]
    summary = []
    for name, (t_single, t_mc) in times.items():
        ratio = t_mc / t_single
        goal = (
            f"goal ≤ {GOAL}×: {'met' if ratio <= GOAL else 'not met'}"
            if m == 10
            else f"the goal ≤ {GOAL}× is stated for M = 10"
        )
        summary.append(f"{name}: MC-{m} / single pass {ratio:.3f}× ({goal}).")
    h, w = args.size
    description = (
        f"Input {h}×{w}, {args.threads} thread(s), {args.device.upper()}, median of {args.reps} predict "
        f"call{'s' * (args.reps != 1)} after one warm-up, mmseg's stock Cityscapes configs (BN "
        f"instead of SyncBN, random weights). Single pass: the stock EncoderDecoder.predict; MC-{m}: "
        f"MCDropoutEncoderDecoder with the same weights, one backbone pass and M = {m} dropout "
        f"samples of the decode head in one batched pass."
    )
    write_bench_result(
        args.json,
        "Segmentation MC dropout vs a single pass",
        columns,
        rows,
        summary,
        description,
        command=" ".join(["python", "bench/seg_mc_dropout_cost.py", *sys.argv[1:]]),
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
