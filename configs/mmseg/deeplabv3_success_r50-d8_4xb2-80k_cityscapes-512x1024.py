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
                 dict(type='SegCalibrationMetric', confidence='auto')]  # PoS once fitted
test_evaluator = val_evaluator
# Calibration discipline: train on train minus a held-out part, fit temperature / Bayes
# binning on that part (tools/fit_calibration.py reads calib_dataloader), report on val.
# Both lists come from: tools/split_holdout.py data/cityscapes leftImg8bit/train --holdout 300
train_dataloader = dict(dataset=dict(ann_file='splits/train_fit.txt'))
calib_dataloader = dict(
    batch_size=1, num_workers=4, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type={{_base_.dataset_type}}, data_root={{_base_.data_root}},
                 ann_file='splits/train_calib.txt', pipeline={{_base_.test_pipeline}},
                 data_prefix=dict(img_path='leftImg8bit/train', seg_map_path='gtFine/train')))
tta_model = dict(type='ConfidenceSegTTAModel')  # --tta: confidence maps of the merged prediction
visualizer = dict(type='ConfidenceSegVisualizer')  # --show-dir: image | prediction | errors | confidence
