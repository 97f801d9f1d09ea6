# The built-in demo data (conf_plugins.mmseg.demo_data) in Cityscapes layout, 128x256 images.
# Splits: train, calib (held out for calibration), val (in-domain), val_shifted (off-domain).
custom_imports = dict(imports=['conf_plugins.mmseg'], allow_failed_imports=False)
dataset_type = 'DemoCityscapesDataset'
data_root = 'datasets/conf_demo_seg'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]


def _split(name, pipeline):
    return dict(
        type=dataset_type,
        data_root=data_root,
        pipeline=pipeline,
        data_prefix=dict(img_path=f'leftImg8bit/{name}', seg_map_path=f'gtFine/{name}'),
    )


train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=_split('train', train_pipeline),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=_split('val', test_pipeline),
)
test_dataloader = val_dataloader
# held-out labelled data for post-hoc calibration (tools/fit_calibration.py): never val / test
calib_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=_split('calib', test_pipeline),
)
val_evaluator = [
    dict(type='IoUMetric', iou_metrics=['mIoU']),
    dict(type='SegCalibrationMetric', confidence='max_softmax'),
]
test_evaluator = val_evaluator
del _split
