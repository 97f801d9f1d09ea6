# MTL on the demo data: FCN + success branch, uncertainty-weighted seg / success losses,
# success branch snapshot at iteration 200, probability of success via Bayes binning.
_base_ = ['./fcn_r18_stl.py']
model = dict(
    type='SuccessEncoderDecoder',
    bayes_num_bins=10,
    decode_head=dict(
        type='FCNSuccessHead',
        success_channels=32,
        task_weighting=dict(type='UncertaintyWeightedLoss', task_names=['seg', 'success'],
                            task_types=['classification', 'classification'])))
# sigma parameters (log sigma^2) get no weight decay
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'log_vars': dict(decay_mult=0.0)}))
custom_hooks = [dict(type='SuccessSnapshotHook', snapshot_iter=200)]
val_evaluator = [dict(type='IoUMetric', iou_metrics=['mIoU']),
                 dict(type='SegCalibrationMetric', confidence='success_score')]
test_evaluator = val_evaluator
work_dir = 'output/demo/seg/fcn_r18_mtl'
# checkpoints at 200 / 400 / 600: iter_200.pth is the whole network at the snapshot iteration
# (a row of tools/success_ablation.py)
default_hooks = dict(checkpoint=dict(interval=200))
