# MTL on the demo data with DeepLabV3: ASPP + success branch, uncertainty weighting.
_base_ = ['./deeplabv3_r18_stl.py']
model = dict(
    type='SuccessEncoderDecoder',
    bayes_num_bins=10,
    decode_head=dict(
        type='ASPPSuccessHead',
        success_channels=32,
        task_weighting=dict(
            type='UncertaintyWeightedLoss',
            task_names=['seg', 'success'],
            task_types=['classification', 'classification'],
        ),
    ),
)
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'log_vars': dict(decay_mult=0.0)}))
custom_hooks = [dict(type='SuccessSnapshotHook', snapshot_iter=200)]
val_evaluator = [
    dict(type='IoUMetric', iou_metrics=['mIoU']),
    dict(type='SegCalibrationMetric', confidence='auto'),
]  # PoS once fitted
test_evaluator = val_evaluator
work_dir = 'output/demo/seg/deeplabv3_r18_mtl'
