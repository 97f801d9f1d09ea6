# The STL model holding local temperature scaling that reads the logits and the image (Ding et
# al., ICCV 2021), fitted on the calib split by tools/fit_calibration.py into
# <checkpoint>_local_temperature_image.pth.
_base_ = ['./fcn_r18_stl.py']
model = dict(type='CalibratedEncoderDecoder', pixel_calibration='local_temperature_image')
