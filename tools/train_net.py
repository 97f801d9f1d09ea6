#!/usr/bin/env python
"""Train / evaluate detectron2 models with conf_plugins' components (DDN, MC dropout).

detectron2's stock ``DefaultTrainer`` and ``launch``; the additions (the calibration
evaluator beside ``COCOEvaluator``, ``--coco NAME JSON IMAGE_ROOT`` to register your own
COCO-format data) live in :mod:`conf_plugins.detectron2.engine`, importable by your project.

    tools/train_net.py --config-file configs/demo/teacher.yaml
    tools/train_net.py --config-file configs/ddn_r50.yaml --num-gpus 8
    tools/train_net.py --config-file configs/demo/teacher.yaml --eval-only \\
        MODEL.WEIGHTS output/demo/teacher/model_final.pth MODEL.ROI_HEADS.NAME MCDropoutROIHeads
    tools/train_net.py --config-file configs/demo/teacher.yaml \\
        --coco mine_train train.json images/ --coco mine_val val.json images/ \\
        DATASETS.TRAIN "('mine_train',)" DATASETS.TEST "('mine_val',)" MODEL.ROI_HEADS.NUM_CLASSES 5
"""

from conf_plugins.detectron2.engine import CalibrationTrainer as Trainer  # noqa: F401
from conf_plugins.detectron2.engine import argument_parser, launch_main, main, setup  # noqa: F401

if __name__ == "__main__":
    launch_main(main, argument_parser().parse_args())
