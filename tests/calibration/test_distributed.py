"""all_reduce over 2 gloo processes on CPU gives the single-process numbers (SPEC §5)."""
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conf_plugins.calibration import BayesBinningCalibrator, CalibrationStats

from ._data import quantised_sample

WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD_SIZE)
    try:
        conf, correct = quantised_sample(3000, seed=21)
        part = slice(rank, None, WORLD_SIZE)  # uneven interleaved halves
        stats = CalibrationStats().update(conf[part], correct[part]).all_reduce()
        bayes = BayesBinningCalibrator(12).update(conf[part], correct[part]).all_reduce()
        torch.save({"stats": stats.state_dict(), "bayes": bayes.state_dict()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_all_reduce_gloo_matches_single_process(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    conf, correct = quantised_sample(3000, seed=21)
    single = CalibrationStats().update(conf, correct).compute()
    single_bayes = BayesBinningCalibrator(12).fit(conf, correct).probabilities()
    for rank in range(WORLD_SIZE):
        saved = torch.load(tmp_path / f"rank{rank}.pt")
        reduced = CalibrationStats.from_state_dict(saved["stats"])
        assert reduced.count == 3000
        assert reduced.compute() == pytest.approx(single, rel=1e-12)
        bayes = BayesBinningCalibrator.from_state_dict(saved["bayes"])
        np.testing.assert_allclose(bayes.probabilities(), single_bayes, rtol=1e-12)


def test_all_reduce_without_process_group_is_a_no_op():
    stats = CalibrationStats().update(np.array([0.3]), np.array([1]))
    assert stats.all_reduce() is stats and stats.count == 1
