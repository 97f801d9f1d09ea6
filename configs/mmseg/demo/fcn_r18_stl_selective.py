# The STL model holding Selective Scaling of its seg logits (Wang et al., CVPR 2023), fitted
# on the calib split by tools/fit_calibration.py into <checkpoint>_selective_scaling.pth.
_base_ = ['./fcn_r18_stl.py']
model = dict(type='CalibratedEncoderDecoder', pixel_calibration='selective_scaling')
