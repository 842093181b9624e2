"""peftds.bench.device: device choice, autocast, CPU threads."""

import contextlib

import pytest
import torch

from peftds.bench.device import autocast_for, cpu_threads, resolve_device, use_bf16
from peftds.errors import PeftdsError


def test_device_and_autocast():
    cpu = resolve_device("cpu")
    assert cpu.type == "cpu" and not use_bf16("auto", cpu) and use_bf16(True, cpu)
    assert isinstance(autocast_for(cpu, False), contextlib.nullcontext)
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(PeftdsError, match=r"bench\.device"):
            resolve_device("cuda")


def test_cpu_threads_restored():
    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with cpu_threads(None):
        assert torch.get_num_threads() == before
