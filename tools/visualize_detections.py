#!/usr/bin/env python
"""Draw a detector's detections on images of any registered dataset, coloured by confidence.

Boxes are coloured by score (viridis: dark = unconfident, yellow = confident) and labelled
with class, score and any uncertainty fields of the heads (MCDropoutROIHeads with
MODEL.MC_DROPOUT.OUTPUT_UNCERTAINTY: entropy H, mutual information MI, box std σ, also drawn
as a ±1σ band). Small images are upscaled (``--scale``; default: short side >= 512 px).
Config, weights and datasets as in tools/train_net.py (``--coco`` included):

    tools/visualize_detections.py --config-file configs/demo/teacher.yaml --dataset conf_demo_det_val \\
        --num-images 4 --output output/vis MODEL.WEIGHTS output/demo/det/teacher/model_final.pth

A dropout teacher's MC-dropout uncertainty: append ``MODEL.ROI_HEADS.NAME MCDropoutROIHeads
MODEL.MC_DROPOUT.OUTPUT_UNCERTAINTY True``.
"""

import os

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from PIL import Image

from conf_plugins.cli import run_main
from conf_plugins.detectron2.engine import CalibratedPredictor, argument_parser, setup
from conf_plugins.detectron2.visualization import draw_detections


def parse_args(argv=None):
    parser = argument_parser()
    parser.add_argument("--dataset", required=True, help="a registered dataset name")
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--min-score", type=float, default=0.0)
    parser.add_argument(
        "--scale",
        type=float,
        default=None,
        help="upscaling of the drawings (default: the short side >= 512 px)",
    )
    parser.add_argument("--output", required=True, help="folder for the PNGs")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = setup(args, datasets_to_check=(args.dataset,))  # the split drawn, not the training one
    if not cfg.MODEL.WEIGHTS or not os.path.isfile(cfg.MODEL.WEIGHTS):
        raise FileNotFoundError(f"MODEL.WEIGHTS is not a file: {cfg.MODEL.WEIGHTS!r}")
    predictor = CalibratedPredictor(cfg)  # loads MODEL.WEIGHTS
    metadata = MetadataCatalog.get(args.dataset)
    os.makedirs(args.output, exist_ok=True)
    written = []
    for record in DatasetCatalog.get(args.dataset)[: args.num_images]:
        image = read_image(record["file_name"], format=cfg.INPUT.FORMAT)
        with torch.no_grad():
            instances = predictor(image)["instances"]
        rgb = image[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else image
        drawn = draw_detections(rgb, instances, metadata, args.min_score, scale=args.scale)
        out = os.path.join(
            args.output, os.path.splitext(os.path.basename(record["file_name"]))[0] + "_detections.png"
        )
        Image.fromarray(drawn).save(out)
        written.append(out)
    print(f"{len(written)} images -> {args.output}")
    return written


if __name__ == "__main__":
    run_main(main)
