"""Small deterministic (confidence, correct) samples shared by the calibration tests."""

import numpy as np

K = 6000  # CalibrationStats' default number of fine bins


def quantised_sample(n=4000, seed=0, num_fine_bins=K, distinct=False):
    """Confidences at fine-bin centres (so fine bins are exactly the ties of the scores) and
    correctness drawn slightly over-confidently from them; float64 numpy arrays."""
    rng = np.random.default_rng(seed)
    if distinct:
        bins = rng.choice(num_fine_bins, size=n, replace=False)
    else:
        bins = np.minimum((rng.beta(4, 1.5, size=n) * num_fine_bins).astype(int), num_fine_bins - 1)
    conf = (bins + 0.5) / num_fine_bins
    correct = rng.random(n) < conf**1.5
    return conf, correct


def continuous_sample(n=4000, seed=1, num_bins=15):
    """Continuous float64 confidences kept 1e-6 away from every coarse edge and from 1."""
    rng = np.random.default_rng(seed)
    conf = rng.beta(4, 1.5, size=3 * n)
    dist = np.abs(conf * num_bins - np.round(conf * num_bins)) / num_bins
    conf = conf[(dist > 1e-6) & (conf < 1 - 1e-6)][:n]
    correct = rng.random(conf.size) < conf**1.5
    return conf, correct
