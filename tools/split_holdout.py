#!/usr/bin/env python
"""Hold out part of a segmentation training folder for calibration (mmseg ``ann_file`` lists).

Calibration (temperature, Bayes binning) must be fitted on labelled data that is neither
trained on nor reported: this writes two ``ann_file`` lists over the images of one folder,
``<out>/<name>_fit.txt`` (train on these) and ``<out>/<name>_calib.txt`` (fit the calibration
on these), a seeded random split by image. The Cityscapes recipes read them:

    tools/split_holdout.py data/cityscapes leftImg8bit/train --holdout 300   # -> data/cityscapes/splits/
"""

import argparse
import os
import random

from conf_plugins.cli import run_main
from conf_plugins.files import refuse_overwrite


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_root")
    parser.add_argument("img_dir", help="image folder relative to data_root")
    parser.add_argument("--holdout", type=int, required=True, help="images held out")
    parser.add_argument("--img-suffix", default="_leftImg8bit.png", help="(Cityscapes default)")
    parser.add_argument("--out-dir", help="default: <data_root>/splits")
    parser.add_argument("--name", default="train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="overwrite existing lists")
    return parser.parse_args(argv)


def image_names(folder, suffix):
    """Paths relative to ``folder`` without ``suffix`` (mmseg's ann_file entries), sorted."""
    names = []
    for root, _, files in os.walk(folder):
        for f in files:
            if f.endswith(suffix):
                rel = os.path.relpath(os.path.join(root, f), folder)
                names.append(rel[: -len(suffix)])
    return sorted(names)


def main(argv=None):
    args = parse_args(argv)
    folder = os.path.join(args.data_root, args.img_dir)
    names = image_names(folder, args.img_suffix)
    if not 0 < args.holdout < len(names):
        raise ValueError(
            f"--holdout must be in [1, {len(names) - 1}] for the {len(names)} "
            f"images '*{args.img_suffix}' under {folder}, got {args.holdout}"
        )
    held = set(random.Random(args.seed).sample(names, args.holdout))
    out_dir = args.out_dir or os.path.join(args.data_root, "splits")
    os.makedirs(out_dir, exist_ok=True)
    outputs = {
        f"{args.name}_fit.txt": [n for n in names if n not in held],
        f"{args.name}_calib.txt": [n for n in names if n in held],
    }
    for file in outputs:
        refuse_overwrite(os.path.join(out_dir, file), args.force)
    for file, entries in outputs.items():
        path = os.path.join(out_dir, file)
        with open(path + ".tmp", "w") as f:
            f.write("".join(n + "\n" for n in entries))
        os.replace(path + ".tmp", path)
        print(f"{path}: {len(entries)} images")
    return {k: len(v) for k, v in outputs.items()}


if __name__ == "__main__":
    run_main(main)
