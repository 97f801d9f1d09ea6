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

import functools
import sys

from detectron2.engine import launch
from torch.multiprocessing import ProcessExitedException

from conf_plugins.cli import EXIT_STATUS, run_main
from conf_plugins.detectron2.engine import CalibrationTrainer as Trainer  # noqa: F401
from conf_plugins.detectron2.engine import argument_parser, main, setup  # noqa: F401


def launch_main(args):
    """detectron2's ``launch`` of :func:`main`, each process through ``run_main``: a user's
    mistake is an ``error:`` line (per process), not a traceback. With one process ``launch``
    runs ``main`` in this one; with more, a process that ended so ends the launch too."""
    try:
        return launch(
            functools.partial(run_main, main),
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except ProcessExitedException as exited:  # its reason is already on stderr
        print(f"error: {exited}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_STATUS) from None


if __name__ == "__main__":
    launch_main(argument_parser().parse_args())
