"""all_reduce over 2 gloo processes on CPU gives the single-process numbers (SPEC §5)."""

import numpy as np
import pytest

from conf_plugins.calibration import BayesBinningCalibrator, CalibrationStats
from tests.distributed import run_in_processes

from ._data import quantised_sample

WORLD_SIZE = 2


def _reduce_on_rank(rank, world_size):
    conf, correct = quantised_sample(3000, seed=21)
    part = slice(rank, None, world_size)  # uneven interleaved halves
    stats = CalibrationStats().update(conf[part], correct[part]).all_reduce()
    bayes = BayesBinningCalibrator(12).update(conf[part], correct[part]).all_reduce()
    return {"stats": stats.state_dict(), "bayes": bayes.state_dict()}


def test_all_reduce_gloo_matches_single_process():
    per_rank = run_in_processes(_reduce_on_rank, WORLD_SIZE)
    conf, correct = quantised_sample(3000, seed=21)
    single = CalibrationStats().update(conf, correct).compute()
    single_bayes = BayesBinningCalibrator(12).fit(conf, correct).probabilities()
    for saved in per_rank:
        reduced = CalibrationStats.from_state_dict(saved["stats"])
        assert reduced.count == 3000
        assert reduced.compute() == pytest.approx(single, rel=1e-12)
        bayes = BayesBinningCalibrator.from_state_dict(saved["bayes"])
        np.testing.assert_allclose(bayes.probabilities(), single_bayes, rtol=1e-12)


def test_all_reduce_without_process_group_is_a_no_op():
    stats = CalibrationStats().update(np.array([0.3]), np.array([1]))
    assert stats.all_reduce() is stats and stats.count == 1
