"""A training job run by a Hydra launcher: GPU slots per worker process."""

from __future__ import annotations

import os

import peftds.train.launched as launched
from peftds.files import GPU_SLOT_LOCK, try_lock_forever


def test_each_worker_claims_one_free_gpu_slot(tmp_path, monkeypatch):
    monkeypatch.setattr(launched, "GPU_SLOT", {})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    held = try_lock_forever(tmp_path / GPU_SLOT_LOCK.format(0))  # another worker holds slot 0
    try:
        assert launched.claim_gpu_slot(2, tmp_path, timeout_s=5) == 1
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
        assert launched.claim_gpu_slot(2, tmp_path) == 1  # a process keeps its slot
    finally:
        held.close()
        launched.GPU_SLOT["fh"].close()
