"""The GPU path (run by bench/gpu_check.sh where CUDA exists; skipped elsewhere): the metric's
statistics on CUDA tensors equal the CPU ones, mixed devices are handled, the heads, the
calibrators and the box intervals run on CUDA."""

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh)"),
]


def test_pixel_confidence_and_statistics_on_cuda_equal_the_cpu():
    from conf_plugins.calibration import CalibrationStats
    from conf_plugins.calibration.pixel_confidence import pixel_confidence

    g = torch.Generator().manual_seed(0)
    z = torch.randn(19, 64, 96, generator=g) * 3
    label = torch.randint(0, 19, (64, 96), generator=g)
    cpu = pixel_confidence(z, 1.2, margin=True, entropy=True, use_kernel=False)
    gpu = pixel_confidence(z.cuda(), 1.2, margin=True, entropy=True)
    for a, b in zip(cpu, gpu):
        assert b.is_cuda and torch.allclose(a.double(), b.cpu().double(), atol=1e-5)
    stats_cpu = CalibrationStats(1500).update(cpu[0], cpu[1] == label)
    stats_gpu = CalibrationStats(1500).update(gpu[0], gpu[1] == label.cuda())
    a, b = stats_cpu.compute(), stats_gpu.compute()
    assert all(abs(a[k] - b[k]) < 1e-5 for k in ("ECE", "AUROC", "AURC"))


def test_segmentation_metric_with_cuda_logits_and_cpu_labels():
    from mmseg.utils import register_all_modules

    from conf_plugins.mmseg import SegCalibrationMetric

    register_all_modules()
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 32, 48, generator=g)
    label = torch.randint(0, 5, (1, 32, 48), generator=g)
    results = []
    for device in ("cpu", "cuda"):
        metric = SegCalibrationMetric(bootstrap=0)
        metric.dataset_meta = dict(classes=[str(c) for c in range(5)])
        sample = {
            "seg_logits": {"data": logits.to(device)},
            "pred_sem_seg": {"data": logits.argmax(0, keepdim=True).to(device)},
            "gt_sem_seg": {"data": label},  # labels stay on the CPU
        }
        metric.process([], [sample])
        results.append(metric.compute_metrics(metric.results))
    assert results[0]["ECE"] == pytest.approx(results[1]["ECE"], abs=1e-6)


def test_detection_heads_and_calibrators_on_cuda():
    from detectron2.modeling import build_model

    from conf_plugins.calibration.conformal import BoxConformal
    from tests.detectron2.test_probability_heads import run_box_inference
    from tests.fixtures import d2_batch, tiny_d2_cfg

    cfg = tiny_d2_cfg(dropout=0.2)
    cfg.MODEL.DEVICE = "cuda"
    model = build_model(cfg).eval()
    detections, _, _ = run_box_inference(model, d2_batch(num_images=2))
    assert all(d.pred_boxes.tensor.is_cuda for d in detections)
    conformal = BoxConformal(3, "additive", "bonferroni", 0.1, False)
    pred = torch.rand(50, 4, dtype=torch.float64) * 50
    conformal.fit(pred, pred + torch.randn(50, 4, dtype=torch.float64), torch.zeros(50, dtype=torch.long))
    conformal = conformal.cuda()
    inner, outer = conformal.intervals(pred.cuda(), torch.zeros(50, dtype=torch.long, device="cuda"))
    assert inner.is_cuda and (outer[:, 2:] >= inner[:, 2:]).all()
