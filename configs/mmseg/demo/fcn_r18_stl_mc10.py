# MC dropout on the STL demo model: the decode head's dropout (p = 0.1 before conv_seg) sampled
# 10 times in one batched pass at test time; mean-softmax confidence plus entropy and mutual
# information maps. Loads the STL checkpoint as it is (same weights).
_base_ = ['./fcn_r18_stl.py']
model = dict(type='MCDropoutEncoderDecoder', mc_samples=10)
