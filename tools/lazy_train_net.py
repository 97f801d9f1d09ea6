#!/usr/bin/env python
"""Train / evaluate a detectron2 LazyConfig (Python config) that uses conf_plugins' components.

    tools/lazy_train_net.py --config-file configs/lazy/teacher_r18_demo.py
    tools/lazy_train_net.py --config-file configs/lazy/teacher_r18_demo.py --eval-only \\
        train.init_checkpoint=output/lazy/teacher/model_final.pth
    tools/lazy_train_net.py --config-file configs/lazy/teacher_r18_demo.py --num-gpus 8 \\
        train.device=cuda

Overrides are ``key=value`` pairs of the LazyConfig (``train.max_iter=100``). detectron2's
``launch`` runs one process per GPU; see :mod:`conf_plugins.detectron2.lazy`.
"""

from detectron2.engine import default_argument_parser

from conf_plugins.detectron2.engine import launch_main
from conf_plugins.detectron2.lazy import main

if __name__ == "__main__":
    launch_main(main, default_argument_parser().parse_args())
