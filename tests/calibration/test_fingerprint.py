"""The weights fingerprint (hashing unchanged: checkpoints sealed before stay valid) and the
verify-once-per-load / train-eval switch mixin shared by the detectron2 and mmseg models."""

import pytest
import torch
from torch import nn

from conf_plugins.calibration.fingerprint import FingerprintVerifiedOnce, weights_fingerprint
from conf_plugins.calibration.sampling import weights_fingerprint as reexported


def named_tensors():
    g = torch.Generator().manual_seed(0)
    return [
        ("w", torch.randn(3, 4, generator=g)),
        ("b", torch.arange(5, dtype=torch.float64)),
        ("n", torch.tensor(7)),
        ("e", torch.zeros(0)),
        ("m", torch.tensor([True, False])),
        ("h", torch.randn(2, 3, generator=g).half().t()),
    ]


def test_the_hash_of_sealed_checkpoints_is_unchanged():
    digest = weights_fingerprint(named_tensors(), "mode;x")
    assert digest.dtype == torch.uint8 and digest.shape == (32,)
    # computed by the implementation that sealed the existing checkpoints
    assert bytes(digest.tolist()).hex() == (
        "095ab36c3175f82b7fee79ca7535743e1e89ffb49287120555d7e4a3fb234c8f"
    )
    assert reexported is weights_fingerprint


class Calibrated(FingerprintVerifiedOnce, nn.Linear):
    def __init__(self):
        super().__init__(2, 2)
        self.checks = 0

    def use(self):
        self.verify_fingerprint_once(self.verify)

    def verify(self):
        self.checks += 1


def test_verified_once_until_the_weights_can_change():
    model = Calibrated().eval()
    model.use()
    model.use()
    assert model.checks == 1  # eval mode: cached
    model.train()
    model.use()
    model.use()
    assert model.checks == 3  # train mode: weights may change between uses, never cached
    model.eval()
    model.use()
    model.use()
    assert model.checks == 4
    model.load_state_dict(model.state_dict())
    model.use()
    assert model.checks == 5
    model.forget_verified()
    model.use()
    assert model.checks == 6


def test_a_failed_check_is_not_remembered():
    model = Calibrated().eval()
    model.verify = lambda: (_ for _ in ()).throw(RuntimeError("stale"))
    for _ in range(2):
        with pytest.raises(RuntimeError, match="stale"):
            model.use()


def test_a_parent_model_switch_or_load_reaches_the_mixin():
    parent = nn.Sequential(Calibrated()).eval()
    parent[0].use()
    parent.train().eval()
    parent[0].use()
    assert parent[0].checks == 2
    parent.load_state_dict(parent.state_dict())
    parent[0].use()
    assert parent[0].checks == 3
