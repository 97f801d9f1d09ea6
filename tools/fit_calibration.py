#!/usr/bin/env python
"""Fit post-hoc calibration of an mmseg model on held-out labelled data.

* a success model (``SuccessEncoderDecoder``): Bayes binning of the success score against
  true success (success paper §3.2) or, with ``pos_map='fusion'``, a logistic regression on
  the log-odds of the success score and of the max softmax, stored in a *new* checkpoint
  next to the given one (``<name>_bayes.pth`` / ``<name>_fusion.pth`` or ``--output``;
  never overwrites unless --force);
* any other model: temperature scaling of the seg logits (the STL-scaled baseline), written
  to ``<work-dir>/temperature.json``;
* a model with ``pixel_calibration`` (``CalibratedEncoderDecoder``, or a success model whose
  probability of success is already fitted): Selective Scaling or local temperature scaling
  of the seg logits, held by the model, in ``<name>_<pixel_calibration>.pth``;
* with ``--risk-control ALPHA``, instead: the confidence threshold of risk-controlled
  selective segmentation (conformal risk control: the expected share of a test image's
  labelled pixels that are kept and wrong is at most ALPHA; ``conf_plugins.calibration.
  risk_control``), for the confidence ``SegCalibrationMetric(confidence='auto')`` picks (the
  probability of success of a fitted success model, the raw success score of an unfitted
  one, else max softmax), written to
  ``<work-dir>/risk_control.json``; evaluate with ``SegCalibrationMetric(risk_control=<that file>)``.

The data is the config's ``calib_dataloader`` (any dataset type and layout; another
dataloader key with ``--dataloader``). ``--perturb held_out`` adds corrupted copies of it
(Tomani et al., CVPR 2021, "Post-hoc Uncertainty Calibration for Domain Drift Scenarios":
calibrate on the held-out split perturbed at increasing strengths, so that the calibration
holds under shift), by default with the 4 held-out corruptions of the Cityscapes-C protocol at
severities 1-5, which the shift benchmark does not evaluate. The tool refuses to fit on the
data that the config evaluates on (``val_dataloader`` / ``test_dataloader``) unless
``--allow-eval-split`` says so: a calibration fitted on the reported split flatters it.
Outputs are written atomically, only once the fit succeeded.

    tools/fit_calibration.py configs/mmseg/demo/fcn_r18_mtl.py CKPT
"""

import argparse
import json
import os

import torch
from mmengine.config import DictAction
from mmengine.runner import CheckpointLoader, Runner, load_state_dict
from mmseg.registry import MODELS

import conf_plugins.mmseg  # noqa: F401  (registers components, safe checkpoint loading)
from conf_plugins.calibration import BayesBinningCalibrator, TemperatureScaler
from conf_plugins.calibration.sampling import UniformSample
from conf_plugins.cli import run_main
from conf_plugins.files import refuse_overwrite, write_atomically, write_json_atomically
from conf_plugins.mmseg import SuccessEncoderDecoder
from conf_plugins.mmseg.config import load_config
from conf_plugins.mmseg.corruption import with_corruption
from conf_plugins.mmseg.segmentor import PIXEL_CALIBRATION_KEYS
from conf_plugins.shift import SEVERITIES, check_corruption, parse_corruptions

MAX_TEMPERATURE_PIXELS = 2_000_000  # uniform sample of the labelled pixels, drawn streaming
MAX_LOCAL_TEMPERATURE_PIXELS = 4_000_000  # whole images, drawn uniformly, up to this many pixels
EVALUATED = ("val_dataloader", "test_dataloader")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("checkpoint")
    parser.add_argument(
        "--dataloader",
        default="calib_dataloader",
        help="the config key of the held-out data (default: calib_dataloader)",
    )
    parser.add_argument(
        "--allow-eval-split",
        action="store_true",
        help="fit even when that data is what the config evaluates on",
    )
    parser.add_argument(
        "--work-dir",
        help="where temperature.json goes (default: the checkpoint's folder); created if missing",
    )
    parser.add_argument(
        "--output",
        help="the calibrated checkpoint of a success model or of a model with pixel_calibration "
        "(default: <checkpoint>_bayes.pth / _fusion.pth / _<pixel_calibration>.pth next to the "
        "checkpoint); its folder is created",
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")
    parser.add_argument(
        "--risk-control",
        type=float,
        metavar="ALPHA",
        help="fit the threshold of risk-controlled selective segmentation at level ALPHA instead",
    )
    parser.add_argument(
        "--perturb",
        metavar="CORRUPTIONS",
        help="also fit on corrupted copies of the held-out data: corruption names, 'held_out' "
        "(the protocol's 4 that the benchmark leaves out) or 'benchmark'; not with --risk-control",
    )
    parser.add_argument(
        "--perturb-severities",
        type=int,
        nargs="+",
        default=list(SEVERITIES),
        help="severities of --perturb (default: 1 2 3 4 5)",
    )
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    args = parser.parse_args(argv)
    if args.perturb is not None:
        args.perturb = parse_corruptions(args.perturb)
        if not args.perturb:
            parser.error("--perturb names no corruption")
        for severity in args.perturb_severities:
            check_corruption(args.perturb[0], severity)
        if args.risk_control is not None:
            parser.error(
                "--perturb with --risk-control: corrupted copies of the calib images are not "
                "exchangeable with the test images, so the guarantee would not hold"
            )
    return args


def data_identity(loader_cfg) -> str:
    """What a dataloader reads, independent of its pipeline, batching and sampler."""
    dataset = dict(loader_cfg.get("dataset", {}))
    for key in ("pipeline", "lazy_init", "serialize_data", "test_mode", "max_refetch"):
        dataset.pop(key, None)
    return json.dumps(dataset, sort_keys=True, default=str)


def held_out_dataloader(cfg, key: str, allow_eval_split: bool):
    """The config of dataloader ``key``; ValueError if missing or if it is an evaluated split."""
    loader_cfg = cfg.get(key)
    if loader_cfg is None:
        raise ValueError(
            f"the config has no '{key}': add a dataloader over held-out labelled "
            "data (see configs/mmseg/_base_/demo_data.py), or name another one "
            "with --dataloader"
        )
    for other in EVALUATED:
        if (
            other != key
            and cfg.get(other) is not None
            and not allow_eval_split
            and data_identity(cfg[other]) == data_identity(loader_cfg)
        ):
            raise ValueError(
                f"'{key}' reads the same data as '{other}', which the config "
                "evaluates on: fitting a calibration there flatters the reported "
                "numbers. Point it at held-out data, or pass --allow-eval-split"
            )
    return loader_cfg


def build_dataloader(loader_cfg):
    """The dataloader of ``loader_cfg``; ValueError when its dataset has no image."""
    loader_cfg = loader_cfg.copy()
    # unserialised: an empty dataset then has length 0 instead of failing in np.concatenate
    loader_cfg.dataset = dict(loader_cfg.dataset, serialize_data=False)
    dataloader = Runner.build_dataloader(loader_cfg)
    if len(dataloader.dataset) == 0:
        raise ValueError(f"the calibration data has no images: {data_identity(loader_cfg)}")
    return dataloader


def fitting_batches(loader_cfg, corruptions=(), severities=SEVERITIES):
    """The batches of the held-out data, then of each of its corrupted copies (each
    corruption at each severity, ``ImageCorruption`` after the image is loaded)."""
    yield from build_dataloader(loader_cfg)
    for corruption in corruptions:
        for severity in severities:
            corrupted = loader_cfg.copy()
            pipeline = with_corruption(loader_cfg.dataset.pipeline, corruption, severity)
            corrupted.dataset = dict(loader_cfg.dataset, pipeline=pipeline)
            yield from build_dataloader(corrupted)


def predictions(model, dataloader):
    """(SegDataSample, label) for every image of the dataloader (or of any batches)."""
    with torch.no_grad():
        for batch in dataloader:
            for sample in model.test_step(batch):
                yield sample, sample.gt_sem_seg.data.squeeze(0)


def fit_bayes(model, dataloader, ignore_index):
    calibrator = BayesBinningCalibrator(model.bayes_num_bins)
    for sample, label in predictions(model, dataloader):
        correct = sample.pred_sem_seg.data.squeeze(0) == label
        calibrator.update(sample.success_score.data.squeeze(0), correct, mask=label != ignore_index)
    return calibrator


def fit_fusion(model, dataloader, ignore_index, seed=0):
    """Fusion coefficients (a, b, c) from a uniform sample of labelled pixels: logistic
    regression of success on (logit success score, logit max softmax, 1)."""
    from conf_plugins.calibration.logistic import fit_logistic, logit

    sample = UniformSample(MAX_TEMPERATURE_PIXELS, seed)
    for prediction, label in predictions(model, dataloader):
        keep = label != ignore_index
        score = prediction.success_score.data.squeeze(0)[keep]
        max_softmax = prediction.seg_logits.data.float().softmax(dim=0).amax(dim=0)[keep]
        correct = (prediction.pred_sem_seg.data.squeeze(0) == label)[keep]
        sample.add(torch.stack([logit(score), logit(max_softmax)], dim=1), correct.double())
    if sample.seen == 0:
        raise ValueError(
            f"no labelled pixels to fit on: every pixel of the split is ignore_index={ignore_index}"
        )
    (correct,) = sample.columns
    features = torch.cat([sample.values, torch.ones(len(correct), 1, dtype=torch.float64)], dim=1)
    return fit_logistic(features, correct), len(correct)


def fit_temperature(model, dataloader, ignore_index, seed=0):
    sample = UniformSample(MAX_TEMPERATURE_PIXELS, seed)
    for prediction, label in predictions(model, dataloader):
        keep = label != ignore_index
        sample.add(prediction.seg_logits.data[:, keep].T, label[keep])
    if sample.seen == 0:
        raise ValueError(
            f"no labelled pixels to fit on: every pixel of the split is ignore_index={ignore_index}"
        )
    (labels,) = sample.columns
    return TemperatureScaler().fit(sample.values, labels), len(labels)


def fit_risk_control(model, dataloader, ignore_index, alpha, num_fine_bins=1500):
    """Per-image statistics of the confidence ``SegCalibrationMetric(confidence='auto')``
    evaluates, then conformal risk control at ``alpha`` (:func:`fit_risk_threshold`)."""
    from conf_plugins.calibration import CalibrationStats
    from conf_plugins.calibration.risk_control import check_alpha, fit_risk_threshold
    from conf_plugins.mmseg import SegCalibrationMetric

    check_alpha(alpha)  # before the inference
    metric, records = SegCalibrationMetric(confidence="auto", num_fine_bins=num_fine_bins), []
    for sample, label in predictions(model, dataloader):
        confidence, _ = metric.confidence_map(sample.to_dict())
        correct = sample.pred_sem_seg.data.squeeze(0) == label
        stats = CalibrationStats(num_fine_bins).update(confidence, correct, mask=label != ignore_index)
        records.append(stats.as_record())
    fitted = fit_risk_threshold(torch.stack(records), num_fine_bins, alpha)
    return {**fitted, "confidence": metric._auto, "temperature": 1.0, "num_fine_bins": num_fine_bins}


def fit_pixel_calibration(model, dataloader, ignore_index, seed=0):
    """Fit the model's pixel calibrator on the raw logits of the held-out images (Selective
    Scaling: a uniform sample of labelled pixels, selected by the probability of success on
    a success model; local temperature scaling: whole images, with the image where its net
    reads it, up to a pixel budget), then
    seal it with the weights' fingerprint. Returns the fit's summary."""
    from conf_plugins.calibration.sampling import UniformItemSample

    if isinstance(model, SuccessEncoderDecoder) and not model.calibrated:
        raise ValueError(
            "pixel_calibration on a success model selects by its probability of success: fit "
            "that first (tools/fit_calibration.py without pixel_calibration) and pass its checkpoint"
        )
    selective = model.pixel_calibration == "selective_scaling"
    pixels = UniformSample(MAX_TEMPERATURE_PIXELS, seed)
    images = UniformItemSample(MAX_LOCAL_TEMPERATURE_PIXELS, seed)
    with model.uncalibrated_logits():
        for prediction, label in predictions(model, dataloader):
            keep = label != ignore_index
            seg = prediction.seg_logits.data.float()
            if not selective:
                image = [prediction.calibration_image.data.float()] if model.reads_image else []
                images.add((seg, label, *image), int(keep.sum()))
            elif "pred_confidence" in prediction:
                pixels.add(seg[:, keep].T, label[keep], prediction.pred_confidence.data[0][keep].double())
            else:
                pixels.add(seg[:, keep].T, label[keep])
    if selective:
        if pixels.seen == 0:
            raise ValueError(
                f"no labelled pixels to fit on: every pixel of the split is ignore_index={ignore_index}"
            )
        labels, *selector = pixels.columns
        summary = model.pixel_calibrator.fit(pixels.values, labels, *selector)
    else:
        summary = model.pixel_calibrator.fit(images.items, ignore_index, seed=seed)
    model.seal_pixel_calibration()
    return summary


def load_for_fit(model, path):
    """The checkpoint at ``path`` loaded strictly into ``model``, except that buffers of a
    calibration the fit is about to produce (fusion coefficients, a pixel calibrator) may be
    missing from it, and unfitted fusion buffers (a network trained with ``pos_map='fusion'``)
    are dropped for a model that maps otherwise."""
    checkpoint = CheckpointLoader.load_checkpoint(path, map_location="cpu")
    state = checkpoint.get("state_dict", checkpoint)
    fitted_here = [name for name in model.state_dict() if name.startswith(PIXEL_CALIBRATION_KEYS)]
    if isinstance(model, SuccessEncoderDecoder) and model.pos_map == "fusion":
        fitted_here += ["fusion_coef", "fusion_fingerprint"]
    own = model.state_dict()
    for name in fitted_here:
        state.setdefault(name, own[name].clone())
    if (
        "fusion_fingerprint" in state
        and "fusion_fingerprint" not in own
        and not state["fusion_fingerprint"].any()
    ):
        for name in ("fusion_coef", "fusion_fingerprint"):  # unfitted, from a pos_map='fusion' training
            state.pop(name)
    load_state_dict(model, state, strict=True)
    return checkpoint


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)  # default scope current: MODELS.build
    if not os.path.isfile(args.checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
    loader_cfg = held_out_dataloader(cfg, args.dataloader, args.allow_eval_split)
    model = MODELS.build(cfg.model)
    checkpoint = load_for_fit(model, args.checkpoint)
    model.eval()
    ignore_index = model.decode_head.ignore_index
    fitted_on = dict(dataloader=args.dataloader, data=json.loads(data_identity(loader_cfg)))
    batches = fitting_batches(loader_cfg, args.perturb or (), args.perturb_severities)
    if args.perturb:
        fitted_on["perturbed"] = dict(corruptions=list(args.perturb), severities=args.perturb_severities)
    if args.risk_control is not None:
        if args.output:
            raise ValueError(
                "--output names a Bayes-binning checkpoint; --risk-control writes risk_control.json"
            )
        work_dir = args.work_dir or os.path.dirname(os.path.abspath(args.checkpoint))
        os.makedirs(work_dir, exist_ok=True)
        out = os.path.join(work_dir, "risk_control.json")
        refuse_overwrite(out, args.force)
        fitted = fit_risk_control(model, build_dataloader(loader_cfg), ignore_index, args.risk_control)
        result = {"method": "conformal_risk_control", "checkpoint": args.checkpoint, **fitted_on, **fitted}
        write_json_atomically(out, result)
        print(json.dumps(result))
        return result
    if getattr(model, "pixel_calibration", None):
        name = model.pixel_calibration
        out = args.output or f"{os.path.splitext(args.checkpoint)[0]}_{name}.pth"
        refuse_overwrite(out, args.force)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)  # before the fit
        summary = fit_pixel_calibration(model, batches, ignore_index)
        checkpoint["state_dict"] = model.state_dict()
        checkpoint.setdefault("meta", {})[name] = dict(fitted_on, **summary)
        write_atomically(out, lambda tmp: torch.save(checkpoint, tmp))
        result = {"method": name, "checkpoint": out, **fitted_on, **summary}
    elif isinstance(model, SuccessEncoderDecoder) and model.pos_map == "fusion":
        out = args.output or f"{os.path.splitext(args.checkpoint)[0]}_fusion.pth"
        refuse_overwrite(out, args.force)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)  # before the fit
        coef, pixels = fit_fusion(model, batches, ignore_index)
        model.set_fusion(coef)
        checkpoint["state_dict"] = model.state_dict()
        checkpoint.setdefault("meta", {})["fusion"] = dict(fitted_on, pixels=pixels)
        write_atomically(out, lambda tmp: torch.save(checkpoint, tmp))
        result = {"method": "fusion", "checkpoint": out, **fitted_on, "pixels": pixels, "coef": coef.tolist()}
    elif isinstance(model, SuccessEncoderDecoder):
        out = args.output or f"{os.path.splitext(args.checkpoint)[0]}_bayes.pth"
        refuse_overwrite(out, args.force)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)  # before the fit
        calibrator = fit_bayes(model, batches, ignore_index)
        if calibrator.count == 0:
            raise ValueError(
                "no labelled pixels to fit on: every pixel of the split is "
                f"ignore_index={ignore_index}; nothing was written"
            )
        model.set_calibrator(calibrator)
        checkpoint["state_dict"] = model.state_dict()
        checkpoint.setdefault("meta", {})["bayes_binning"] = dict(fitted_on, pixels=calibrator.count)
        write_atomically(out, lambda tmp: torch.save(checkpoint, tmp))
        result = {
            "method": "bayes_binning",
            "checkpoint": out,
            **fitted_on,
            "pixels": calibrator.count,
            "pos_per_bin": [round(float(p), 4) for p in calibrator.probabilities()],
        }
    else:
        if args.output:
            raise ValueError(
                "--output names the Bayes-binning checkpoint of a success model; "
                f"{type(model).__name__} gets temperature scaling, written to "
                "<--work-dir>/temperature.json"
            )
        work_dir = args.work_dir or os.path.dirname(os.path.abspath(args.checkpoint))
        os.makedirs(work_dir, exist_ok=True)  # before the fit, not after it
        out = os.path.join(work_dir, "temperature.json")
        refuse_overwrite(out, args.force)
        scaler, pixels = fit_temperature(model, batches, ignore_index)
        result = {
            "method": "temperature_scaling",
            "temperature": scaler.temperature,
            "checkpoint": args.checkpoint,
            **fitted_on,
            "pixels": pixels,
        }
        write_json_atomically(out, result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
