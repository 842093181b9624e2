"""Learned gates for UniPELT-style designs (Mao et al., ACL 2022): ``g(x) = sigmoid(x W^T + b)``.

A :class:`Gate` is ``Linear(d, 1)`` followed by a sigmoid: one scalar per token in (0, 1), computed
from the input of the submodule it gates and multiplied into that submodule's contribution. Cost
``d + 1`` per gate (d = the width of the input it reads). The Linear keeps PyTorch's default
initialisation; identity at init does not depend on it, because the gated updates (LoRA ``B``,
the adapter's ``up``) start at zero whatever the gate.

Where the gated input is not at hand when the gate is applied (the prefix gate reads the attention
input but is applied inside the attention function), :meth:`Gate.capture` is a forward pre-hook
that stores the input on the gate for :meth:`Gate.take` to consume in the same forward pass
(gradient checkpointing re-runs both, in the same order).
"""

from __future__ import annotations

import torch
from torch import nn


def gate_cost(d: int) -> int:
    """Parameters of one gate reading a ``d``-wide input."""
    return d + 1


class Gate(nn.Module):
    """``sigmoid(Linear(d, 1)(x))``: one value in (0, 1) per token, shape ``[..., 1]``."""

    def __init__(self, d: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.proj = nn.Linear(d, 1, device=device, dtype=dtype)
        self.stash: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.proj.weight
        if x.dtype != w.dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(w.dtype)
        return torch.sigmoid(self.proj(x))

    def capture(self, module: nn.Module, args: tuple) -> None:
        """Forward pre-hook: keep the hooked module's input for :meth:`take`."""
        self.stash = args[0]

    def take(self) -> torch.Tensor:
        """The gate on the captured input (consumed: a stale input is never reused)."""
        x, self.stash = self.stash, None
        if x is None:
            raise RuntimeError("gate: its input was not captured in this forward")
        return self(x)
