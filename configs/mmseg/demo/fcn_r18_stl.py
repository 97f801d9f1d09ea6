# STL baseline on the demo data: stock FCN head (ResNetV1c-18 from scratch, BN), max softmax.
_base_ = ['mmseg::_base_/models/fcn_r50-d8.py', '../_base_/demo_data.py',
          '../_base_/demo_runtime.py']
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    pretrained=None,
    data_preprocessor=dict(size=(128, 256)),
    backbone=dict(depth=18, norm_cfg=norm_cfg),
    decode_head=dict(in_channels=512, channels=128, num_classes=5, norm_cfg=norm_cfg),
    auxiliary_head=None)
work_dir = 'output/demo/seg/fcn_r18_stl'
