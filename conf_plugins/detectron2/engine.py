"""detectron2's stock trainer and launcher with our evaluator and datasets from the command line.

``tools/train_net.py`` is this module's :func:`main` under detectron2's ``launch``; a project
of its own imports the pieces instead::

    from conf_plugins.detectron2.engine import CalibrationTrainer, argument_parser, setup
    cfg = setup(argument_parser().parse_args(["--config-file", "my.yaml",
                                              "--coco", "mine_val", "val.json", "images/"]))
    trainer = CalibrationTrainer(cfg)
"""

import json
import os

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import DefaultPredictor, DefaultTrainer, default_argument_parser, default_setup
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators
from detectron2.utils import comm

from conf_plugins.distributed import shutdown_process_group

from .calibration_stage import (
    attach_calibration_stage,
    build_calibrated_model,
    stage_from_config,
    with_class_probabilities,
)
from .config import add_ddn_config, merge_config_file
from .corruption import build_corrupted_test_loader
from .demo_data import register_demo_detection
from .evaluator import DetectionCalibrationEvaluator

DEMO_PREFIX = "conf_demo_det"


class CalibrationTrainer(DefaultTrainer):
    """``DefaultTrainer`` whose model carries the calibration stage of ``MODEL.CALIBRATION``
    and whose evaluation adds calibration beside ``COCOEvaluator``."""

    @classmethod
    def build_model(cls, cfg):
        """detectron2's model with the calibration stage attached (:func:`build_calibrated_model`)."""
        return build_calibrated_model(cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None, allow_empty=True):
        """COCOEvaluator + calibration. ``allow_empty`` (the default, used by evaluations
        during training): a model that predicts nothing yet gets NaN calibration metrics and a
        warning instead of killing the run; ``--eval-only`` makes it an error."""
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return DatasetEvaluators(
            [
                COCOEvaluator(dataset_name, output_dir=output_folder),
                DetectionCalibrationEvaluator.from_config(
                    cfg, dataset_name, output_folder, allow_empty=allow_empty
                ),
            ]
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """The stock test loader, with ``INPUT.CORRUPTION`` applied when it is set."""
        return build_corrupted_test_loader(cfg, dataset_name)


class CalibratedPredictor(DefaultPredictor):
    """detectron2's ``DefaultPredictor`` (one image in, its outputs back) whose model carries
    the calibration stage of ``MODEL.CALIBRATION``, loaded from ``MODEL.WEIGHTS``."""

    def __init__(self, cfg):
        super().__init__(with_class_probabilities(cfg))
        attach_calibration_stage(self.model, stage_from_config(cfg, self.model))
        if self.model.calibration_stage.fitted_parts:  # built after the stock load: load its state
            DetectionCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)


def argument_parser():
    """detectron2's ``default_argument_parser`` plus ``--coco NAME JSON IMAGE_ROOT``."""
    return add_coco_argument(default_argument_parser())


def add_coco_argument(parser):
    """``--coco NAME JSON IMAGE_ROOT`` (repeatable) on ``parser``, read by :func:`setup`."""
    parser.add_argument(
        "--coco",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a COCO-format dataset (repeatable); the same as an entry of DATASETS.COCO",
    )
    return parser


def register_datasets(cfg, coco=(), names=()):
    """Register the COCO-format datasets of ``DATASETS.COCO`` and ``coco`` (name, JSON, image
    root), and the demo data, generated on first use, only when the config or ``names`` use it."""
    for entry in [*cfg.DATASETS.COCO, *coco]:
        if len(entry) != 3:
            raise ValueError(
                f"DATASETS.COCO / --coco entries are (name, json_file, image_root), got {entry!r}"
            )
        name, json_file, image_root = entry
        if not os.path.isfile(json_file):
            raise FileNotFoundError(f"dataset '{name}': no such COCO JSON: {json_file}")
        if name in DatasetCatalog.list():
            raise ValueError(
                f"dataset '{name}' is already registered (a detectron2 builtin or "
                "a repeated entry): choose another name"
            )
        register_coco_instances(name, {}, json_file, image_root)
    used = (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST, *names)
    if any(name.startswith(DEMO_PREFIX + "_") for name in used):
        register_demo_detection()


def check_datasets(cfg, names=None):
    """Fail early, with directions, when a dataset of ``names`` (default: the config's
    DATASETS.TRAIN and DATASETS.TEST) is unknown (ValueError) or not on disk
    (FileNotFoundError). Loads each one, i.e. reads its JSON."""
    for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST) if names is None else names:
        if name not in DatasetCatalog.list():
            raise ValueError(
                f"dataset '{name}' is not registered: register a COCO-format "
                f"dataset with --coco {name} JSON IMAGE_ROOT (or DATASETS.COCO in "
                "the config), or use the demo data (configs/demo/teacher.yaml)"
            )
        try:
            DatasetCatalog.get(name)
        except (FileNotFoundError, OSError, AssertionError) as e:
            root = os.environ.get("DETECTRON2_DATASETS", "datasets")
            raise FileNotFoundError(
                f"dataset '{name}' is not available ({e}).\nCOCO is expected under {root}/coco "
                "(set DETECTRON2_DATASETS). To try conf_plugins without COCO, use the built-in "
                "demo data: tools/train_net.py --config-file configs/demo/teacher.yaml"
            ) from None


def setup(args, datasets_to_check=None):
    """The frozen config of ``args`` (our keys added, ``model_zoo:`` bases resolved), with
    its datasets registered and checked; detectron2's ``default_setup`` (logging, seed).

    ``datasets_to_check``: the dataset names checked (see :func:`check_datasets`), by default
    the config's DATASETS.TRAIN and DATASETS.TEST. A tool that runs on one split names that
    one alone: checking the training set of COCO would read its whole JSON for nothing.
    """
    if not args.config_file:
        raise ValueError("--config-file is required (e.g. configs/demo/teacher.yaml)")
    cfg = add_ddn_config(get_cfg())
    merge_config_file(cfg, args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    names = None if datasets_to_check is None else tuple(datasets_to_check)
    register_datasets(cfg, getattr(args, "coco", ()), names or ())
    check_datasets(cfg, names)
    return cfg


def run(args):
    """Train (``DefaultTrainer`` with our evaluator) or, with ``--eval-only``, evaluate."""
    cfg = setup(args)
    if args.eval_only:
        model = CalibrationTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        evaluators = [
            CalibrationTrainer.build_evaluator(cfg, name, allow_empty=False) for name in cfg.DATASETS.TEST
        ]
        results = CalibrationTrainer.test(cfg, model, evaluators)
        if comm.is_main_process():  # machine-readable copy of what detectron2 printed
            with open(os.path.join(cfg.OUTPUT_DIR, "eval_results.json"), "w") as f:
                json.dump(results, f, indent=1)
        return results
    trainer = CalibrationTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def main(args):
    """:func:`run`, then the process group torn down (the entry point given to ``launch``)."""
    results = run(args)
    shutdown_process_group()
    return results


def launch_main(main_fn, args):
    """detectron2's ``launch`` of ``main_fn(args)``, each process through ``run_main``: a
    user's mistake is an ``error:`` line (per process), not a traceback. With one process
    ``launch`` runs it in this one; with more, a process that ended so ends the launch too."""
    import functools
    import sys

    from detectron2.engine import launch
    from torch.multiprocessing import ProcessExitedException

    from conf_plugins.cli import EXIT_STATUS, run_main

    try:
        return launch(
            functools.partial(run_main, main_fn),
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except ProcessExitedException as exited:  # its reason is already on stderr
        print(f"error: {exited}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_STATUS) from None
