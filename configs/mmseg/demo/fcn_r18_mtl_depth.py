# Three-task MTL on the demo data (Kendall et al.'s three-way case): seg, success and per-pixel
# depth (masked L1, metres), all weighted by learned homoscedastic uncertainty; depth is a
# regression task: 1/2 exp(-s) L + s/2. Only training reads depth; inference is the MTL one.
_base_ = ['./fcn_r18_mtl.py']
model = dict(
    decode_head=dict(
        depth_branch=True,
        depth_channels=32,
        task_weighting=dict(
            task_names=['seg', 'success', 'depth'],
            task_types=['classification', 'classification', 'regression'],
        ),
    )
)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='LoadDepthAnnotation', depth_rescale_factor=1e-3),  # uint16 mm -> metres, 0 invalid
    dict(type='RandomFlip', prob=0.5),  # flips gt_depth_map too (a seg field)
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    dataset=dict(
        type='DemoCityscapesDepthDataset',
        pipeline=train_pipeline,
        data_prefix=dict(depth_map_path='depth/train'),
    )
)
work_dir = 'output/demo/seg/fcn_r18_mtl_depth'
