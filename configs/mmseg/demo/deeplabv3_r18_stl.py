# STL baseline on the demo data: stock DeepLabV3 (ASPP) head, ResNetV1c-18 from scratch.
_base_ = ['mmseg::_base_/models/deeplabv3_r50-d8.py', '../_base_/demo_data.py', '../_base_/demo_runtime.py']
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    pretrained=None,
    data_preprocessor=dict(size=(128, 256)),
    # output stride 16 (not the stock 8): 4x fewer backbone FLOPs, fine for 128x256 scenes
    backbone=dict(depth=18, norm_cfg=norm_cfg, strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2)),
    decode_head=dict(
        in_channels=512, channels=128, num_classes=5, norm_cfg=norm_cfg, dilations=(1, 2, 3, 4)
    ),  # ASPP rates for 8x16 feature maps
    auxiliary_head=None,
)
work_dir = 'output/demo/seg/deeplabv3_r18_stl'
