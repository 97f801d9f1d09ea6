"""pixel_confidence against the softmax tensor it avoids (issue 14.1)."""
import pytest
import torch

from conf_plugins.calibration.pixel_confidence import pixel_confidence


@pytest.mark.parametrize("temperature", [1.0, 0.75, 2.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_the_softmax_tensor(temperature, dtype):
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(19, 33, 47, generator=g) * 4).to(dtype)
    z[:, 0, 0] = 7.0  # an exact tie: the first maximum wins, as torch.argmax
    probs = (z / temperature).softmax(0)
    conf, pred, margin, ent = pixel_confidence(z, temperature, margin=True, entropy=True)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    assert torch.allclose(conf, probs.max(0).values, **tol)
    assert torch.equal(pred, z.argmax(0))
    top2 = z.topk(2, dim=0).values
    assert torch.allclose(margin, (top2[0] - top2[1]) / temperature, **tol)
    assert torch.allclose(ent, -(probs * probs.clamp_min(1e-300).log()).sum(0), **tol)


def test_bad_inputs():
    with pytest.raises(ValueError, match="two classes"):
        pixel_confidence(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        pixel_confidence(torch.zeros(3, 4, 4), temperature=0.0)
