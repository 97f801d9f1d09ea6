# MTL on the demo data: FCN + success branch, uncertainty-weighted seg / success losses.
# Defaults chosen by the study (experiments/success_ablation, on the calib split): class-balanced
# success loss, the live (final) branch predicts success (the iteration-200 snapshot is kept
# in the checkpoint but not used), the fusion map (logistic regression on the log-odds of the
# success score and of the max softmax; tools/fit_calibration.py writes <name>_fusion.pth).
# The paper-literal variant (additive loss, snapshot, Bayes binning, 10 bins) is
# fcn_r18_mtl_paper.py.
_base_ = ['./fcn_r18_stl.py']
model = dict(
    type='SuccessEncoderDecoder',
    pos_map='fusion',
    bayes_num_bins=100,  # with pos_map='bayes'
    decode_head=dict(
        type='FCNSuccessHead',
        success_channels=32,
        success_class_weight='balanced',
        predict_with_snapshot=False,
        task_weighting=dict(
            type='UncertaintyWeightedLoss',
            task_names=['seg', 'success'],
            task_types=['classification', 'classification'],
        ),
    ),
)
# sigma parameters (log sigma^2) get no weight decay
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'log_vars': dict(decay_mult=0.0)}))
custom_hooks = [dict(type='SuccessSnapshotHook', snapshot_iter=200)]
val_evaluator = [
    dict(type='IoUMetric', iou_metrics=['mIoU']),
    dict(type='SegCalibrationMetric', confidence='auto'),
]  # PoS once fitted
test_evaluator = val_evaluator
work_dir = 'output/demo/seg/fcn_r18_mtl'
# checkpoints at 200 / 400 / 600: iter_200.pth is the whole network at the snapshot iteration
# (a row of tools/success_ablation.py)
default_hooks = dict(checkpoint=dict(interval=200))
