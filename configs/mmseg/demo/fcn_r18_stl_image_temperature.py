# The STL model holding one temperature per image, predicted from that image's own seg logits
# (local temperature scaling's net averaged over the image), fitted on the calib split by
# tools/fit_calibration.py into <checkpoint>_image_temperature.pth.
_base_ = ['./fcn_r18_stl.py']
model = dict(type='CalibratedEncoderDecoder', pixel_calibration='image_temperature')
