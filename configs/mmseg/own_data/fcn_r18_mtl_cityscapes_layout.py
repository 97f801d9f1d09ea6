# Your own data in the Cityscapes layout (leftImg8bit/<split>/, gtFine/<split>/, Cityscapes
# file suffixes and 19 classes): the demo MTL model with one `data` dict. Change data_root (or
# pass --cfg-options data.data_root=...), and calib to a held-out part of your labelled data.
_base_ = ['../demo/fcn_r18_mtl.py']
data = dict(
    type='CityscapesDataset',
    data_root='data/cityscapes',
    img_dir='leftImg8bit',
    seg_map_dir='gtFine',
    splits=dict(
        train=dict(folder='train', ann_file='splits/train_fit.txt'),
        calib=dict(folder='train', ann_file='splits/train_calib.txt'),
        val='val',
    ),
)
model = dict(decode_head=dict(num_classes=19))
work_dir = 'output/own_data/fcn_r18_mtl_cityscapes_layout'
