# STL baseline on the demo data: stock FCN head (ResNetV1c-18 from scratch, BN), max softmax.
_base_ = ['mmseg::_base_/models/fcn_r50-d8.py', '../_base_/demo_data.py', '../_base_/demo_runtime.py']
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    pretrained=None,
    data_preprocessor=dict(size=(128, 256)),
    # output stride 16 (not the stock 8): 4x fewer backbone FLOPs, fine for 128x256 scenes
    backbone=dict(depth=18, norm_cfg=norm_cfg, strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2)),
    decode_head=dict(in_channels=512, channels=128, num_classes=5, norm_cfg=norm_cfg),
    auxiliary_head=None,
)
work_dir = 'output/demo/seg/fcn_r18_stl'
