"""The demo's dropout teacher (configs/demo/teacher.yaml) as a detectron2 LazyConfig: a
ResNet-18 FPN Faster R-CNN with our ProbabilityROIHeads and DropoutFastRCNNConvFCHead,
trained on the built-in demo data, evaluated with COCOEvaluator and our calibration
evaluator. Train and evaluate with ``python tools/lazy_train_net.py --config-file
configs/lazy/teacher_r18_demo.py [--eval-only] [key=value ...]``."""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from conf_plugins.detectron2 import DetectionCalibrationEvaluator, ProbabilityROIHeads
from conf_plugins.detectron2.box_head import DropoutFastRCNNConvFCHead

model = get_config("common/models/mask_rcnn_fpn.py").model
bottom_up = model.backbone.bottom_up
bottom_up.stem.norm = "BN"
bottom_up.stages.update(depth=18, norm="BN")
del bottom_up.stages["stride_in_1x1"]  # basic blocks (ResNet-18) have no 1x1 convolution
bottom_up.freeze_at = 0
model.backbone.out_channels = 64
model.proposal_generator.head.in_channels = 64
model.proposal_generator.anchor_generator.sizes = [[8], [16], [32], [64], [128]]
model.proposal_generator.post_nms_topk = (256, 128)
for key in ("mask_in_features", "mask_pooler", "mask_head"):
    del model.roi_heads[key]
model.roi_heads._target_ = ProbabilityROIHeads  # the stock heads + class probabilities
model.roi_heads.update(num_classes=3, batch_size_per_image=128, output_class_probs=True)
model.roi_heads.box_head = L(DropoutFastRCNNConvFCHead)(
    input_shape=ShapeSpec(channels=64, height=7, width=7), conv_dims=[], fc_dims=[256, 256], dropout=0.2
)
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=256)

dataloader = dict(
    train=L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names="conf_demo_det_train"),
        mapper=L(DatasetMapper)(
            is_train=True,
            augmentations=[
                L(T.ResizeShortestEdge)(short_edge_length=(128,), max_size=128, sample_style="choice"),
                L(T.RandomFlip)(horizontal=True),
            ],
            image_format="BGR",
        ),
        total_batch_size=8,
        num_workers=0,
    ),
    test=L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names="conf_demo_det_val", filter_empty=False),
        mapper=L(DatasetMapper)(
            is_train=False,
            augmentations=[L(T.ResizeShortestEdge)(short_edge_length=128, max_size=128)],
            image_format="BGR",
        ),
        num_workers=0,
    ),
    evaluator=L(DatasetEvaluators)(
        evaluators=[
            L(COCOEvaluator)(dataset_name="conf_demo_det_val", output_dir="${train.output_dir}"),
            L(DetectionCalibrationEvaluator)(
                dataset_name="conf_demo_det_val", output_dir="${train.output_dir}"
            ),
        ]
    ),
)

optimizer = get_config("common/optim.py").SGD
optimizer.lr = 0.02

train = get_config("common/train.py").train
train.update(output_dir="output/lazy/teacher", max_iter=700, eval_period=0, device="cpu", seed=0)
train.checkpointer.period = 500

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[550, 700]),
    warmup_length=100 / 700,
    warmup_factor=0.001,
)
