# MTL on Cityscapes: stock deeplabv3 R50-D8 config + success branch + uncertainty weighting.
_base_ = ['mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-80k_cityscapes-512x1024.py']
custom_imports = dict(imports=['conf_plugins.mmseg'], allow_failed_imports=False)
model = dict(
    type='SuccessEncoderDecoder',
    bayes_num_bins=10,
    decode_head=dict(
        type='ASPPSuccessHead',
        success_channels=32,
        task_weighting=dict(type='UncertaintyWeightedLoss', task_names=['seg', 'success'],
                            task_types=['classification', 'classification'])))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'log_vars': dict(decay_mult=0.0)}))
# Early checkpoint of the success branch (success paper §3.2): 10 % into training.
custom_hooks = [dict(type='SuccessSnapshotHook', snapshot_iter=8000)]
val_evaluator = [dict(type='IoUMetric', iou_metrics=['mIoU']),
                 dict(type='SegCalibrationMetric', confidence='success_score')]
test_evaluator = val_evaluator
