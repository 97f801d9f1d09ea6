"""ImageCorruption in mmseg's real pipeline: the image is corrupted, labels are not, the same
file gets the same pixels in every pass, and bad names / severities are clear errors."""

import numpy as np
import pytest
from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS

import conf_plugins.mmseg  # noqa: F401  (registers the transform and the demo dataset)
from conf_plugins.mmseg import generate_demo_segmentation, with_corruption

PIPELINE = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"), dict(type="PackSegInputs")]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg_corrupt")
    generate_demo_segmentation(str(root), {"train": 1, "calib": 1, "val": 2, "val_shifted": 1})
    return str(root)


def samples(data_root, pipeline):
    init_default_scope("mmseg")
    dataset = DATASETS.build(
        dict(
            type="DemoCityscapesDataset",
            data_root=data_root,
            pipeline=pipeline,
            data_prefix=dict(img_path="leftImg8bit/val", seg_map_path="gtFine/val"),
        )
    )
    return [dataset[i] for i in range(len(dataset))]


def test_corruption_in_the_pipeline(data_root):
    clean = samples(data_root, PIPELINE)
    fog = samples(data_root, with_corruption(PIPELINE, "fog", 4))
    again = samples(data_root, with_corruption(PIPELINE, "fog", 4))
    assert with_corruption(PIPELINE, "fog", 4)[1] == dict(
        type="ImageCorruption", corruption="fog", severity=4
    )
    for c, f, a in zip(clean, fog, again):
        ci, fi = c["inputs"].float(), f["inputs"].float()
        assert fi.shape == ci.shape and (fi - ci).abs().mean() > 5
        assert (f["inputs"] == a["inputs"]).all()
        assert (f["data_samples"].gt_sem_seg.data == c["data_samples"].gt_sem_seg.data).all()
    # two different files get different draws of the same corruption
    noise = samples(data_root, with_corruption(PIPELINE, "gaussian_noise", 3))
    deltas = [(n["inputs"].float() - c["inputs"].float()).numpy() for n, c in zip(noise, clean)]
    assert not np.array_equal(deltas[0], deltas[1])


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown corruption 'haze'; valid: gaussian_noise"):
        with_corruption(PIPELINE, "haze", 2)
    with pytest.raises(ValueError, match="severity must be an integer in 1-5"):
        conf_plugins.mmseg.ImageCorruption("fog", 0)
    with pytest.raises(ValueError, match="no LoadImageFromFile"):
        with_corruption(PIPELINE[1:], "fog", 2)
