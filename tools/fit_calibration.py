#!/usr/bin/env python
"""Fit post-hoc calibration of an mmseg model on a held-out split.

* a success model (``SuccessEncoderDecoder``): Bayes binning of the success score against
  true success (success paper §3.2), stored in a *new* checkpoint next to the given one
  (``<name>_bayes.pth``; never overwrites unless --force);
* any other model: temperature scaling of the seg logits (the STL-scaled baseline), written
  to ``<work-dir>/temperature.json``.

    tools/fit_calibration.py configs/mmseg/demo/fcn_r18_mtl.py CKPT --split calib
"""
import argparse
import json
import os

import torch
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmengine.runner import Runner, load_checkpoint
from mmseg.registry import MODELS

import conf_plugins.mmseg  # noqa: F401  (registers components, safe checkpoint loading)
from conf_plugins.calibration import BayesBinningCalibrator, TemperatureScaler
from conf_plugins.mmseg import SuccessEncoderDecoder

MAX_TEMPERATURE_PIXELS = 2_000_000  # uniform subsample of the split's labelled pixels


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("checkpoint")
    parser.add_argument("--split", default="calib", help="folder under leftImg8bit/ and gtFine/")
    parser.add_argument("--work-dir", help="where temperature.json goes (default: the "
                        "checkpoint's folder)")
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    return parser.parse_args(argv)


def predictions(model, dataloader):
    """(SegDataSample, ignore-aware label) for every image of the split."""
    with torch.no_grad():
        for batch in dataloader:
            for sample in model.test_step(batch):
                yield sample, sample.gt_sem_seg.data.squeeze(0)


def fit_bayes(model, dataloader, ignore_index):
    calibrator = BayesBinningCalibrator(model.bayes_num_bins)
    for sample, label in predictions(model, dataloader):
        correct = sample.pred_sem_seg.data.squeeze(0) == label
        calibrator.update(sample.success_score.data.squeeze(0), correct,
                          mask=label != ignore_index)
    return calibrator


def fit_temperature(model, dataloader, ignore_index, seed=0):
    logits, labels = [], []
    for sample, label in predictions(model, dataloader):
        keep = label != ignore_index
        logits.append(sample.seg_logits.data[:, keep].T)
        labels.append(label[keep])
    logits, labels = torch.cat(logits), torch.cat(labels)
    if len(labels) > MAX_TEMPERATURE_PIXELS:
        pick = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
        logits, labels = logits[pick[:MAX_TEMPERATURE_PIXELS]], labels[pick[:MAX_TEMPERATURE_PIXELS]]
    return TemperatureScaler().fit(logits, labels), len(labels)


def refuse_overwrite(path, force):
    if os.path.exists(path) and not force:
        raise SystemExit(f"{path} exists; pass --force to overwrite it")


def main(argv=None):
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get("default_scope", "mmseg"))
    if not os.path.isfile(args.checkpoint):
        raise SystemExit(f"checkpoint not found: {args.checkpoint}")
    model = MODELS.build(cfg.model)
    checkpoint = load_checkpoint(model, args.checkpoint, map_location="cpu", strict=True)
    model.eval()
    loader_cfg = cfg.test_dataloader.copy()
    loader_cfg.dataset.data_prefix = dict(img_path=f"leftImg8bit/{args.split}",
                                          seg_map_path=f"gtFine/{args.split}")
    dataloader = Runner.build_dataloader(loader_cfg)
    ignore_index = model.decode_head.ignore_index
    stem = os.path.splitext(args.checkpoint)[0]
    if isinstance(model, SuccessEncoderDecoder):
        out = f"{stem}_bayes.pth"
        refuse_overwrite(out, args.force)
        calibrator = fit_bayes(model, dataloader, ignore_index)
        model.set_calibrator(calibrator)
        checkpoint["state_dict"] = model.state_dict()
        checkpoint.setdefault("meta", {})["bayes_binning"] = dict(split=args.split,
                                                                   pixels=calibrator.count)
        torch.save(checkpoint, out)
        result = {"method": "bayes_binning", "checkpoint": out, "split": args.split,
                  "pixels": calibrator.count,
                  "pos_per_bin": [round(float(p), 4) for p in calibrator.probabilities()]}
    else:
        work_dir = args.work_dir or os.path.dirname(os.path.abspath(args.checkpoint))
        out = os.path.join(work_dir, "temperature.json")
        refuse_overwrite(out, args.force)
        scaler, pixels = fit_temperature(model, dataloader, ignore_index)
        result = {"method": "temperature_scaling", "temperature": scaler.temperature,
                  "checkpoint": args.checkpoint, "split": args.split, "pixels": pixels}
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
