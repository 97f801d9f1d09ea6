"""Tiny real detectron2 / mmseg configs and generated inputs, shared by all tests (CPU)."""

import importlib.util
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


SCRIPT_FOLDERS = (
    "tools",
    "demo",
    *sorted(os.path.join("experiments", d) for d in os.listdir(os.path.join(ROOT, "experiments"))),
)


def load_tool(name: str):
    """The script ``<name>.py`` of this checkout (in ``tools/``, ``demo/`` or one of
    ``experiments/``), loaded from its file.

    Not ``import tools.<name>``: official detectron2 installs a top-level ``tools`` package
    into site-packages, which shadows our ``tools/`` folder (a directory without __init__).
    """
    paths = [os.path.join(ROOT, d, f"{name}.py") for d in SCRIPT_FOLDERS]
    path = next((p for p in paths if os.path.isfile(p)), None)
    if path is None:
        raise FileNotFoundError(f"no script {name}.py in {', '.join(SCRIPT_FOLDERS)}")
    spec = importlib.util.spec_from_file_location(f"conf_plugins_tool_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_zoo_cfg(zoo_config: str = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"):
    """A stock config of detectron2's model zoo (any meta-architecture: Faster / Mask /
    Cascade R-CNN, RetinaNet), shrunk to an R18 on 64-px images that runs in ms on CPU, with
    our keys added and 3 classes."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    from conf_plugins.detectron2 import add_ddn_config

    cfg = add_ddn_config(get_cfg())
    cfg.merge_from_file(model_zoo.get_config_file(zoo_config))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 32
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = cfg.MODEL.RETINANET.NUM_CLASSES = 3
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 32
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 96
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 96
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


def tiny_d2_cfg(dropout: float = 0.0):
    """detectron2's stock Faster R-CNN R50-FPN config, shrunk (:func:`tiny_zoo_cfg`);
    ``dropout`` > 0 selects the dropout box head (a DDN teacher)."""
    cfg = tiny_zoo_cfg()
    if dropout:
        cfg.MODEL.ROI_BOX_HEAD.NAME = "DropoutFastRCNNConvFCHead"
        cfg.MODEL.ROI_BOX_HEAD.DROPOUT = dropout
    return cfg


def tiny_ddn_cfg(teacher_weights: str, num_samples: int = 4):
    """The DDN student of a ``tiny_d2_cfg(dropout=...)`` teacher saved at ``teacher_weights``."""
    cfg = tiny_d2_cfg(dropout=0.3)
    cfg.MODEL.META_ARCHITECTURE = "DDNRCNN"
    cfg.MODEL.ROI_HEADS.NAME = "DDNROIHeads"
    cfg.MODEL.ROI_HEADS.PROPOSAL_APPEND_GT = False
    cfg.MODEL.WEIGHTS = teacher_weights
    cfg.MODEL.DDN.TEACHER_WEIGHTS = teacher_weights
    cfg.MODEL.DDN.NUM_SAMPLES = num_samples
    return cfg


def d2_batch(num_images=2, size=64, num_classes=3, seed=0):
    """detectron2 model inputs: random images with 2 GT boxes each."""
    from conf_plugins.detectron2.demo_data import random_detection_batch

    return random_detection_batch(num_images, size, num_classes, seed)


def tiny_mmseg_model_cfg(decode_head_type="FCNHead", num_classes=4, **head_kwargs):
    """mmseg EncoderDecoder with a ResNetV1c-18 backbone and the given stock decode head."""
    from mmseg.utils import register_all_modules

    register_all_modules()  # mmseg's default scope, as its tools set it
    head = dict(
        type=decode_head_type,
        in_channels=512,
        in_index=3,
        channels=32,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=dict(type="BN"),
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    )
    if decode_head_type == "FCNHead":
        head.update(num_convs=1, concat_input=False)
    elif decode_head_type in ("ASPPHead", "DepthwiseSeparableASPPHead"):
        head.update(dilations=(1, 2, 3, 4))
    if decode_head_type == "DepthwiseSeparableASPPHead":
        head.update(c1_in_channels=64, c1_channels=16)
    head.update(head_kwargs)
    from mmengine.config import ConfigDict

    return ConfigDict(
        type="EncoderDecoder",
        data_preprocessor=dict(
            type="SegDataPreProcessor",
            mean=[123.675, 116.28, 103.53],
            std=[58.395, 57.12, 57.375],
            bgr_to_rgb=True,
            pad_val=0,
            seg_pad_val=255,
            size=(64, 64),
        ),
        backbone=dict(
            type="ResNetV1c",
            depth=18,
            num_stages=4,
            out_indices=(0, 1, 2, 3),
            dilations=(1, 1, 2, 4),
            strides=(1, 2, 1, 1),
            norm_cfg=dict(type="BN"),
            norm_eval=False,
            style="pytorch",
            contract_dilation=True,
        ),
        decode_head=head,
        train_cfg=dict(),
        test_cfg=dict(mode="whole"),
    )


def mmseg_batch(num_images=2, size=64, num_classes=4, seed=0, ignore_fraction=0.1):
    """mmseg data dicts (inputs + SegDataSample with gt_sem_seg) from generated images."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    g = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(num_images):
        inputs.append(torch.randint(0, 255, (3, size, size), generator=g, dtype=torch.uint8))
        label = torch.randint(0, num_classes, (1, size, size), generator=g)
        label[torch.rand(label.shape, generator=g) < ignore_fraction] = 255
        sample = SegDataSample(
            metainfo=dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size))
        )
        sample.gt_sem_seg = PixelData(data=label)
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def run_tiny_demo(cwd) -> str:
    """``python demo/run_demo.py --tiny`` (the main job on a few images and iterations) in
    ``cwd``; returns its stdout."""
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "demo", "run_demo.py"), "--tiny"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def detections_of(model, batch):
    """The ``Instances`` of each image of ``batch`` from ``model``'s full inference (its
    post-processing and calibration stage included), without gradients."""
    with torch.no_grad():
        return [out["instances"] for out in model(batch)]
