"""LoRA (SPEC §4): a rank-r update on chosen attention projections of every attention site.

``y = base(x) + (dropout(x) A^T B^T) * alpha / r`` with ``A`` (r x d_in) initialised like an
``nn.Linear`` weight (kaiming-uniform, a=sqrt(5)) and ``B`` (d_out x r) zero, so the model's outputs
are unchanged before training. Cost r * (d_in + d_out) per adapted matrix.

``gated`` (UniPELT, default false): a learned gate computed from the LoRA input takes the place of
``alpha / r``, as in UniPELT's reference code (Mao et al., ACL 2022, whose gated LoRA layer sets its
scaling to the gate): ``base(x) + g(x) · (dropout(x) A^T B^T)`` with ``g(x) = sigmoid(x W_g^T + b_g)``
one scalar per token (:class:`~peftds.model.strategies.gating.Gate`, ``Linear(d_in, 1)``); ``alpha``
has no effect on a gated update. One gate per adapted matrix, reading that matrix's own input (for
cross-attention k/v: the encoder output); the gate reads ``x`` before LoRA dropout. Cost per matrix
grows by d_in + 1. Identity at init still holds.

The projection at ``(parent, attr)`` is replaced by :class:`LoRALinear`, which keeps the original
``nn.Linear`` as its child ``base_layer`` (stable state-dict names, and what
:class:`~peftds.model.strategies.base.LayerShape` reads). This module also holds the small wrapper base
class shared with the adapter strategy: every peftds wrapper around a Linear exposes ``weight``,
``bias``, ``in_features`` and ``out_features`` of the innermost Linear, because model code reads
them (T5's FFN checks ``self.wo.weight.dtype``) and so do cost formulas.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from peftds.config.schema import Section, setting
from peftds.errors import PeftdsError
from peftds.model.backbones import Backbone, Layer
from peftds.model.strategies.base import LayerShape, Strategy
from peftds.model.strategies.gating import Gate, gate_cost

GENERIC_PROJECTIONS = ("q", "k", "v", "o")


class LinearWrapper(nn.Module):
    """Base of peftds wrappers around a Linear: the wrapped module is the child ``base_layer``."""

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer

    @property
    def linear(self) -> nn.Linear:
        """The innermost ``nn.Linear`` (through any stack of peftds wrappers)."""
        return innermost_linear(self.base_layer)

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.linear.bias

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    @property
    def out_features(self) -> int:
        return self.linear.out_features


def innermost_linear(module: nn.Module) -> nn.Module:
    """Follow ``base_layer`` links down to the original Linear."""
    while isinstance(module, LinearWrapper):
        module = module.base_layer
    return module


class LoRALinear(LinearWrapper):
    """``base_layer(x) + dropout(x) @ lora_A^T @ lora_B^T * scaling`` (gated: the gate is the scaling)."""

    def __init__(self, base_layer: nn.Module, rank: int, alpha: float, dropout: float = 0.0, gated: bool = False):
        super().__init__(base_layer)
        lin = innermost_linear(base_layer)
        if rank < 1:
            raise PeftdsError(f"LoRA rank must be >= 1 (got {rank})")
        w = lin.weight
        self.rank = int(rank)
        self.scaling = float(alpha) / self.rank
        self.lora_A = nn.Parameter(torch.empty(self.rank, lin.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(lin.out_features, self.rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_gate = Gate(lin.in_features, device=w.device, dtype=w.dtype) if gated else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        z = self.lora_dropout(x)
        if z.dtype != self.lora_A.dtype and not torch.is_autocast_enabled(z.device.type):
            z = z.to(self.lora_A.dtype)
        z = F.linear(F.linear(z, self.lora_A), self.lora_B)
        z = z * self.lora_gate(x) if self.lora_gate is not None else z * self.scaling
        return out + z.to(out.dtype)

    def delta_weight(self) -> torch.Tensor:
        """``scaling · B A``: what folding this update into the base weight adds (ungated LoRA only; a gated
        update depends on the input, so it has no weight of its own)."""
        if self.lora_gate is not None:
            raise PeftdsError("a gated LoRA update depends on its input: it cannot be folded into a weight")
        return (self.lora_B @ self.lora_A) * self.scaling

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scaling={'gate' if self.lora_gate is not None else f'{self.scaling:g}'}"


@dataclass(frozen=True)
class LoRAConfig(Section):
    targets: list[str] | str = setting(["q", "v"], "attention projections to adapt: any of q, k, v, o (or 'q,v')")
    alpha: int | float = setting(16, "update scale numerator: alpha / r (a gated update: its gate instead)", gt=0.0)
    dropout: float = setting(0.0, "dropout on the LoRA input", ge=0.0, lt=1.0)
    gated: bool = setting(False, "UniPELT gate: sigmoid(Linear(d_in, 1)(LoRA input)) scales the update, not alpha/r")

    def check(self, where: str) -> None:
        names = [s.strip() for s in self.targets.split(",")] if isinstance(self.targets, str) else self.targets
        if not names or any(t not in GENERIC_PROJECTIONS for t in names) or len(set(names)) != len(names):
            raise PeftdsError(f"{where}.targets must be distinct names among q, k, v, o, got {self.targets!r}")


def _targets(hp: Mapping[str, Any]) -> list[str]:
    t = hp["targets"]
    if isinstance(t, str):
        t = [s.strip() for s in t.split(",") if s.strip()]
    t = list(dict.fromkeys(t))
    bad = [n for n in t if n not in GENERIC_PROJECTIONS]
    if bad or not t:
        raise PeftdsError(f"lora.targets must be a non-empty subset of q,k,v,o (got {hp['targets']!r})")
    return t


def _descend(parent: nn.Module, attr: str) -> tuple[nn.Module, str]:
    """(parent, attr) of the Linear (or LoRALinear) under any non-LoRA peftds wrappers."""
    mod = getattr(parent, attr)
    while isinstance(mod, LinearWrapper) and not isinstance(mod, LoRALinear):
        parent, attr, mod = mod, "base_layer", mod.base_layer
    return parent, attr


class LoRA(Strategy):
    name = "lora"
    letter = "L"
    size_symbol = "r"
    scalable = True
    config = LoRAConfig

    def cost(self, shape: LayerShape, size: int, hp: Mapping[str, Any]) -> int:
        targets = _targets(hp)
        gated = bool(hp.get("gated", False))
        total = 0
        for att in shape.attentions:
            for t in targets:
                d_in, d_out = att.proj_dims[t]
                total += size * (d_in + d_out) + (gate_cost(d_in) if gated else 0)
        return total

    def apply(self, backbone: Backbone, layer: Layer, size: int, hp: Mapping[str, Any]) -> None:
        targets = _targets(hp)
        for site in layer.attentions:
            for t in targets:
                parent, attr = _descend(*site.projections[t])
                mod = getattr(parent, attr)
                if isinstance(mod, LoRALinear):
                    raise PeftdsError(f"layer {layer.index}: projection '{t}' already has LoRA")
                if not isinstance(mod, nn.Linear):
                    raise PeftdsError(f"layer {layer.index}: projection '{t}' is {type(mod).__name__}, not a Linear")
                gated = bool(hp.get("gated", False))
                setattr(parent, attr, LoRALinear(mod, size, hp["alpha"], float(hp["dropout"]), gated=gated))
