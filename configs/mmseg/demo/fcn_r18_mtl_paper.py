# The paper-literal MTL (success-prediction paper §3): seg + success losses added (no
# uncertainty weighting), plain cross-entropy for the success branch, its snapshot at
# iteration 200 predicts success, Bayes binning with 10 equal-width bins.
_base_ = ['./fcn_r18_mtl.py']
model = dict(
    pos_map='bayes',
    bayes_num_bins=10,
    decode_head=dict(success_class_weight=None, predict_with_snapshot=True, task_weighting=None),
)
work_dir = 'output/demo/seg/fcn_r18_mtl_paper'
