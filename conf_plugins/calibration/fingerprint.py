"""What ties a fitted calibration to the weights it was fitted for: a SHA-256 fingerprint of
those weights, and the mixin that verifies it once per load / train-eval switch."""

import hashlib

import torch


def weights_fingerprint(named_tensors, extra: str = "") -> torch.Tensor:
    """SHA-256 (32 uint8) of (name, dtype, shape, bytes) of each tensor, in the given order,
    and of ``extra`` (e.g. the inference mode the calibration belongs to)."""
    digest = hashlib.sha256(extra.encode())
    for name, tensor in named_tensors:
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return torch.frombuffer(bytearray(digest.digest()), dtype=torch.uint8)


class FingerprintVerifiedOnce:
    """Mixin (before ``nn.Module`` in the bases) for a model that holds a calibration sealed
    with the fingerprint of its weights: the fingerprint is hashed (every weight, so not per
    batch) once, then trusted until the weights can have changed, i.e. until a train-eval
    switch or a ``load_state_dict``. A check passed in train mode is not remembered.

    Call :meth:`verify_fingerprint_once` with the check before using the calibration, and
    :meth:`forget_verified` whenever the calibration itself is replaced.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._fingerprint_verified = False
        self.register_load_state_dict_post_hook(lambda module, _: module.forget_verified())

    def forget_verified(self):
        """Verify again at the next use (the weights or the calibration changed)."""
        self._fingerprint_verified = False

    def train(self, mode: bool = True):
        self.forget_verified()
        return super().train(mode)

    def verify_fingerprint_once(self, verify):
        """``verify()`` (which raises on a stale fingerprint) unless it already passed in eval
        mode since the last load, train-eval switch or :meth:`forget_verified`."""
        if not self._fingerprint_verified:
            verify()
            self._fingerprint_verified = not self.training


class SealedState:
    """Mixin for an ``nn.Module`` whose fitted state is its buffers plus a ``fingerprint``
    buffer (32 uint8, zero until sealed) and whose ``settings`` string says what it is: the
    fingerprint ties the state to the weights it was fitted for, their inference mode
    (``signature``) and those settings."""

    @property
    def fitted(self) -> bool:
        return bool(self.fingerprint.any())

    def _digest(self, named_weights, signature: str) -> torch.Tensor:
        own = [(n, b) for n, b in self.named_buffers() if n != "fingerprint"]
        return weights_fingerprint([*named_weights, *own], f"{self.settings};{signature}")

    def seal(self, named_weights, signature: str = ""):
        """Record the fingerprint of ``named_weights`` (the weights the fit used), of
        ``signature`` (their inference mode) and of this fitted state."""
        self.fingerprint.copy_(self._digest(named_weights, signature))

    def check_sealed(self, named_weights, signature: str, missing: str, stale: str):
        """RuntimeError(``missing``) when never fitted, RuntimeError(``stale``) unless sealed
        for exactly these weights, mode, settings and state."""
        if not self.fitted:
            raise RuntimeError(missing)
        if not torch.equal(self._digest(named_weights, signature), self.fingerprint.cpu()):
            raise RuntimeError(stale)
