"""The one training step the benchmarks share (timed variants, epoch timing, bench-eval's warm-up training)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from peftds.bench.device import autocast_for


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that require gradients."""
    return [p for p in model.parameters() if p.requires_grad]


def make_optimizer(params: list[nn.Parameter], lr: float, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, fused on CUDA and foreach on CPU (the fastest implementation of each)."""
    kw: dict[str, Any] = {"lr": lr}
    if device.type == "cuda":
        kw["fused"] = True
    else:
        kw["foreach"] = True
    return torch.optim.AdamW(params, **kw)


def train_step(
    call: Callable[..., Any],
    opt: torch.optim.Optimizer,
    batch: Mapping[str, torch.Tensor],
    device: torch.device | None = None,
    bf16: bool = False,
) -> torch.Tensor:
    """Forward (bf16 autocast when asked), backward, optimizer step; returns the detached loss.
    ``batch`` must already be on the model's device (moving it is the caller's cost to time or not)."""
    with autocast_for(device, bf16):
        loss = call(**batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()
