#!/usr/bin/env python
"""Peak memory of the calibration fits of tools/fit_calibration.py at Cityscapes-val size.

Streams N generated images (default 500, as Cityscapes val) of 19-class logits at 1024x2048
(~2 M labelled pixels each, 5 % ignore) through the fitting code of tools/fit_calibration.py,
each fit in its own subprocess (peak RSS is per process):

  temperature:   its UniformSample (at most 2 M pixels kept) + TemperatureScaler.fit;
  bayes binning: BayesBinningCalibrator.update per image (streaming counts);
  nothing:       only generating the images (the floor: one image's logits in memory).

and prints each peak beside what collecting every pixel's logits would take (computed, not
run: N x 2 M x 19 x 4 bytes). Goal: bounded memory, far below collecting every pixel. With
--json PATH the parent process also writes the result as a bench result for docs/generate.py.
Not a test.

    .venv/bin/python bench/fit_memory.py [--images 500] [--json PATH]
"""

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time

import torch

H, W, C, IGNORE = 1024, 2048, 19, 255
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def images(count, seed=0):
    """(logits (C, H, W), label (H, W)) per image; labels follow the logits' arg-max 80 % of
    the time, so the fitted temperature is a real one."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(C, H, W, generator=g) * 3
    for _ in range(count):
        logits = base + torch.randn(C, 1, 1, generator=g)
        label = torch.where(
            torch.rand(H, W, generator=g) < 0.8, logits.argmax(0), torch.randint(0, C, (H, W), generator=g)
        )
        label[torch.rand(H, W, generator=g) < 0.05] = IGNORE
        yield logits, label


def fit_tool():
    spec = importlib.util.spec_from_file_location(
        "fit_calibration", os.path.join(ROOT, "tools", "fit_calibration.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def child(which, count):
    start = time.perf_counter()
    result = {}
    if which == "temperature":
        tool = fit_tool()
        sample = tool.UniformSample(tool.MAX_TEMPERATURE_PIXELS)
        for logits, label in images(count):
            keep = label != IGNORE
            sample.add(logits[:, keep].T, label[keep])  # what tools/fit_calibration.py does
        (labels,) = sample.columns
        scaler = tool.TemperatureScaler().fit(sample.values, labels)
        result.update(
            temperature=scaler.temperature,
            kept=len(labels),
            seen=sample.seen,
            cap=tool.MAX_TEMPERATURE_PIXELS,
        )
    elif which == "bayes":
        from conf_plugins.calibration import BayesBinningCalibrator
        from conf_plugins.calibration.pixel_confidence import pixel_confidence

        calibrator = BayesBinningCalibrator(100)
        for logits, label in images(count):
            score, pred, _, _ = pixel_confidence(logits)  # stands in for the success score
            calibrator.update(score, pred == label, mask=label != IGNORE)
        result.update(count=calibrator.count)
    else:
        for _ in images(count):
            pass
    result["seconds"] = time.perf_counter() - start
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--child", choices=["temperature", "bayes", "nothing"])
    parser.add_argument(
        "--json", metavar="PATH", help="also write the result as JSON (input of docs/generate.py --bench)"
    )
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.images)
    print(f"{args.images} images of {C}-class logits at {H}x{W}")
    rows = {}
    for which in ("nothing", "temperature", "bayes"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", which, "--images", str(args.images)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows[which] = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{which:<12} peak RSS {rows[which]['peak_rss_mb']:8.0f} MB  "
            f"{rows[which]['seconds']:6.0f} s  {json.dumps(rows[which])}"
        )
    collect_all_mb = args.images * H * W * 0.95 * C * 4 / 2**20
    print(
        f"collecting every labelled pixel's logits instead: {collect_all_mb / 1024:.1f} GB "
        f"(computed); ratio peak temperature fit / that: "
        f"{rows['temperature']['peak_rss_mb'] / collect_all_mb:.4f}"
    )
    if args.json:
        write_json(args, rows, collect_all_mb)


def write_json(args, rows, collect_all_mb):
    """The parent's result as a bench JSON: peak RSS per fit beside collecting every pixel."""
    from conf_plugins.provenance import write_bench_result

    temp, bayes, floor = rows["temperature"], rows["bayes"], rows["nothing"]
    what = {
        "nothing": "generating the images only (the floor)",
        "temperature": f"UniformSample (≤ {temp['cap']:,} pixels) + TemperatureScaler.fit; "
        f"T = {temp['temperature']:.3f}, kept {temp['kept']:,} of "
        f"{temp['seen']:,} pixels",
        "bayes": f"BayesBinningCalibrator(100).update per image; {bayes['count']:,} pixels",
    }
    columns = ["fit", "what it holds", "peak RSS (MB)", "time (s)", "peak / collecting all"]
    table = [
        {
            "fit": name,
            "what it holds": what[name],
            "peak RSS (MB)": round(r["peak_rss_mb"]),
            "time (s)": round(r["seconds"], 1),
            "peak / collecting all": round(r["peak_rss_mb"] / collect_all_mb, 4),
        }
        for name, r in rows.items()
    ]
    table.append(
        {
            "fit": "collecting all (computed)",
            "what it holds": f"every labelled pixel's {C} logits as float32",
            "peak RSS (MB)": round(collect_all_mb),
            "time (s)": None,
            "peak / collecting all": 1.0,
        }
    )
    summary = []
    for name, label in (("temperature", "Temperature fit"), ("bayes", "Bayes-binning fit")):
        r = rows[name]
        ratio = r["peak_rss_mb"] / collect_all_mb
        summary.append(
            f"{label}: peak RSS {r['peak_rss_mb']:.0f} MB = {ratio:.4f}× collecting every labelled "
            f"pixel's logits ({collect_all_mb / 1024:.1f} GB, computed), "
            f"{r['peak_rss_mb'] - floor['peak_rss_mb']:+.0f} MB over generating the images alone "
            f"(goal: bounded, below collecting all: {'met' if ratio < 1 else 'not met'})."
        )
    bounded = temp["kept"] <= temp["cap"]
    summary.append(
        f"The temperature fit kept {temp['kept']:,} of {temp['seen']:,} labelled pixels "
        f"(cap {temp['cap']:,}: {'bounded' if bounded else 'NOT bounded'}); the "
        f"Bayes-binning fit keeps only streaming counts."
    )
    description = (
        f"{args.images} generated image(s) of {C}-class logits at {H}×{W} (about 5 % of the "
        f"pixels ignored; labels follow the logits' arg-max 80 % of the time), streamed through "
        f"the fitting code of tools/fit_calibration.py, each fit in its own subprocess (peak RSS "
        f"is per process, the Python + torch import included). temperature: its UniformSample "
        f"(at most {temp['cap']:,} pixels kept) + TemperatureScaler.fit; bayes: "
        f"BayesBinningCalibrator.update per image (streaming counts); nothing: only generating "
        f"the images (the floor: one image's logits in memory). Collecting all is computed, not "
        f"run: images × {H}×{W} × 0.95 × {C} × 4 bytes."
    )
    write_bench_result(
        args.json,
        "Calibration fit peak memory vs collecting every pixel",
        columns,
        table,
        summary,
        description,
        command=" ".join(["python", "bench/fit_memory.py", *sys.argv[1:]]),
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
