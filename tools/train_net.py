#!/usr/bin/env python
"""Train / evaluate detectron2 models with conf_plugins' components (DDN, MC dropout).

detectron2's stock ``DefaultTrainer`` and ``launch``; the only addition is the calibration
evaluator beside ``COCOEvaluator``. Examples:

    tools/train_net.py --config-file configs/demo/teacher.yaml
    tools/train_net.py --config-file configs/ddn_r50.yaml --num-gpus 8
    tools/train_net.py --config-file configs/demo/teacher.yaml --eval-only \\
        MODEL.WEIGHTS output/demo/teacher/model_final.pth MODEL.ROI_HEADS.NAME MCDropoutROIHeads
"""
import json
import os

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators
from detectron2.utils import comm

from conf_plugins.detectron2 import (DetectionCalibrationEvaluator, add_ddn_config,
                                     register_demo_detection)
from conf_plugins.detectron2.config import merge_config_file
from conf_plugins.distributed import shutdown_process_group


class Trainer(DefaultTrainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None, allow_empty=True):
        """COCOEvaluator + calibration. ``allow_empty`` (the default, used by evaluations
        during training): a model that predicts nothing yet gets NaN calibration metrics and a
        warning instead of killing the run; ``--eval-only`` makes it an error."""
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return DatasetEvaluators([
            COCOEvaluator(dataset_name, output_dir=output_folder),
            DetectionCalibrationEvaluator.from_config(cfg, dataset_name, output_folder,
                                                      allow_empty=allow_empty),
        ])


def check_datasets(cfg):
    """Fail early, with directions, when a dataset of the config is not on disk."""
    for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
        if name not in DatasetCatalog.list():
            raise SystemExit(f"dataset '{name}' is not registered")
        try:
            DatasetCatalog.get(name)
        except (FileNotFoundError, OSError, AssertionError) as e:
            root = os.environ.get("DETECTRON2_DATASETS", "datasets")
            raise SystemExit(
                f"dataset '{name}' is not available ({e}).\nCOCO is expected under {root}/coco "
                "(set DETECTRON2_DATASETS). To try conf_plugins without COCO, use the built-in "
                "demo data: tools/train_net.py --config-file configs/demo/teacher.yaml") from None


def setup(args):
    if not args.config_file:
        raise SystemExit("--config-file is required (e.g. configs/demo/teacher.yaml)")
    register_demo_detection()
    cfg = add_ddn_config(get_cfg())
    merge_config_file(cfg, args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    check_datasets(cfg)
    return cfg


def main(args):
    results = run(args)
    shutdown_process_group()
    return results


def run(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume)
        evaluators = [Trainer.build_evaluator(cfg, name, allow_empty=False)
                      for name in cfg.DATASETS.TEST]
        results = Trainer.test(cfg, model, evaluators)
        if comm.is_main_process():  # machine-readable copy of what detectron2 printed
            with open(os.path.join(cfg.OUTPUT_DIR, "eval_results.json"), "w") as f:
                json.dump(results, f, indent=1)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
