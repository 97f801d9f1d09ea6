"""detectron2 LazyConfigs (new-style Python configs) with our components.

Many current detectron2 projects configure models in Python (``LazyCall``): our ROI heads,
box head and evaluator are plain configurable classes, so a LazyConfig names them directly
(``configs/lazy/teacher_r18_demo.py``). :func:`main` trains it with detectron2's
``SimpleTrainer`` and hooks, or evaluates it (``--eval-only``), through detectron2's
``launch`` (``tools/lazy_train_net.py``); the demo data is registered when a dataset of the
config names it.
"""

import json
import logging
import os

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import SimpleTrainer, create_ddp_model, default_setup, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from omegaconf import OmegaConf

from .demo_data import register_demo_detection
from .engine import DEMO_PREFIX, shutdown_process_group

logger = logging.getLogger(__name__)


def load_lazy_config(path: str, overrides=()):
    """The LazyConfig at ``path`` with ``key=value`` ``overrides``; the demo data registered
    when one of its dataset names starts with the demo prefix."""
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(
            f"--config-file: no such LazyConfig: {path!r} (e.g. configs/lazy/teacher_r18_demo.py)"
        )
    cfg = LazyConfig.apply_overrides(LazyConfig.load(path), list(overrides))
    text = OmegaConf.to_yaml(cfg.dataloader) if "dataloader" in cfg else ""
    if DEMO_PREFIX + "_" in text:
        register_demo_detection()
    return cfg


def evaluate(cfg, model) -> dict:
    """``dataloader.evaluator`` over ``dataloader.test``; results also written to
    ``train.output_dir/eval_results.json``."""
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    if comm.is_main_process():
        print_csv_format(results)
        os.makedirs(cfg.train.output_dir, exist_ok=True)
        with open(os.path.join(cfg.train.output_dir, "eval_results.json"), "w") as f:
            json.dump(results, f, indent=1)
    return results


def train(cfg, resume: bool = False) -> dict:
    """``train.max_iter`` iterations of ``SimpleTrainer`` (optimizer, scheduler, periodic
    checkpoints, evaluation every ``train.eval_period`` and after the last iteration, by
    detectron2's ``EvalHook``); returns the last evaluation."""
    model = instantiate(cfg.model).to(cfg.train.device)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = SimpleTrainer(model, instantiate(cfg.dataloader.train), optimizer)
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    main_process = comm.is_main_process()
    results = {}

    def evaluate_into_results():  # EvalHook runs it every eval_period and after the last iteration
        results.update(evaluate(cfg, model))
        return results

    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main_process else None,
            hooks.EvalHook(cfg.train.eval_period, evaluate_into_results),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter), cfg.train.log_period
            )
            if main_process
            else None,
        ]
    )
    start = 0
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    if resume and checkpointer.has_checkpoint():
        start = trainer.iter + 1
    trainer.train(start, cfg.train.max_iter)
    if main_process:
        checkpointer.save("model_final")
    return results


def main(args) -> dict:
    """Train or (``args.eval_only``) evaluate the LazyConfig ``args.config_file`` with the
    overrides ``args.opts`` (the entry point given to ``launch``)."""
    cfg = load_lazy_config(args.config_file, args.opts)
    default_setup(cfg, args)
    if args.eval_only:
        model = instantiate(cfg.model).to(cfg.train.device)
        model = create_ddp_model(model)
        DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
        results = evaluate(cfg, model.eval())
    else:
        results = train(cfg, resume=args.resume)
    shutdown_process_group()
    return results
