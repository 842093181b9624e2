"""peftds.bench.memory: resident tensors counted once per storage; one step's peak."""

import torch

from peftds.bench.memory import MemoryProbe, process_peak_rss_mb, resident_bytes, tensor_bytes


def test_tensor_and_resident_bytes():
    a = torch.zeros(100)
    assert tensor_bytes([a, a[:10], "not a tensor"]) == 400  # a view shares its storage
    lin = torch.nn.Linear(10, 10)
    weights = resident_bytes(lin, None)
    assert weights == 4 * (100 + 10)
    opt = torch.optim.AdamW(lin.parameters())
    lin(torch.ones(1, 10)).sum().backward()
    opt.step()
    assert resident_bytes(lin, opt) >= 3 * weights  # + AdamW's two moments


def test_probe_sees_an_allocation():
    probe = MemoryProbe(torch.device("cpu"))
    assert probe.kind in ("rss", "rss_unreset")
    before = probe.begin()
    x = torch.ones(8 * 2**20)  # 32 MiB, touched
    peak = probe.end(before)
    assert x.sum() > 0 and peak >= 16 * 2**20
    assert process_peak_rss_mb() > 0
