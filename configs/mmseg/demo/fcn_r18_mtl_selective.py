# The demo MTL holding Selective Scaling of its seg logits, selected by its own probability of
# success (fit the fusion map first, then tools/fit_calibration.py on <name>_fusion.pth writes
# <name>_fusion_selective_scaling.pth); evaluate its calibrated max softmax.
_base_ = ['./fcn_r18_mtl.py']
model = dict(pixel_calibration='selective_scaling')
