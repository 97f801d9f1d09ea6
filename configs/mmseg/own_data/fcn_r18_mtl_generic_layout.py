# Your own data in mmseg's generic layout (BaseSegDataset): images/<split>/*.jpg and
# annotations/<split>/*.png holding class indices (255 = ignore). Set the classes, suffixes,
# root and splits here; every dataloader (train, calib, val, test) follows.
_base_ = ['../demo/fcn_r18_mtl.py']
classes = ('background', 'object')
data = dict(
    type='BaseSegDataset',
    data_root='data/my_dataset',
    img_dir='images',
    seg_map_dir='annotations',
    img_suffix='.jpg',
    seg_map_suffix='.png',
    metainfo=dict(classes=classes, palette=[[0, 0, 0], [255, 0, 0]]),
    splits=dict(train='train', calib='calib', val='val'),
)
model = dict(decode_head=dict(num_classes=len(classes)))
work_dir = 'output/own_data/fcn_r18_mtl_generic_layout'
