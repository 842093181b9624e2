"""LoRA (SPEC §4): a rank-r update on chosen projections of every attention site (and of the FFN).

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

Targets: the attention projections q, k, v, o of every attention site and, per layer, the
feed-forward projections gate, up, down (Llama-style ``gate_proj``/``up_proj``/``down_proj``; GPT-2,
BERT and BART have up/down only, T5 v1.1 gate/up/down). A target the family lacks is an error.

The projection at ``(parent, attr)`` is replaced by :class:`LoRALinear`, which keeps the original
``nn.Linear`` (or GPT-2 ``Conv1D``) as its child ``base_layer`` (stable state-dict names, and what
:class:`~peftds.model.strategies.base.LayerShape` reads). A fused projection (Phi-3 ``qkv_proj`` /
``gate_up_proj``, GPT-2 ``c_attn``) gets one :class:`LoRALinear` per target, each updating only its
output columns (``window``) with its own A, B and rank: the wrappers nest, so q and v on
``qkv_proj`` are two independent LoRAs, exactly a peft LoRA of rank r_q + r_v on the fused matrix
whose B is block-structured.
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
from peftds.model.backbones import Backbone, Layer, linear_dims
from peftds.model.strategies.base import LayerShape, LinearWrapper, Strategy, innermost_linear
from peftds.model.strategies.gating import Gate, gate_cost

ATTENTION_TARGETS = ("q", "k", "v", "o")
FFN_TARGETS = ("gate", "up", "down")
GENERIC_PROJECTIONS = ATTENTION_TARGETS + FFN_TARGETS


class LoRALinear(LinearWrapper):
    """``base_layer(x) + dropout(x) @ lora_A^T @ lora_B^T * scaling`` (gated: the gate is the scaling), added
    to output columns ``window = (start, stop)`` only when given (one target of a fused projection)."""

    def __init__(
        self,
        base_layer: nn.Module,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        gated: bool = False,
        window: tuple[int, int] | None = None,
    ):
        super().__init__(base_layer)
        lin = innermost_linear(base_layer)
        if rank < 1:
            raise PeftdsError(f"LoRA rank must be >= 1 (got {rank})")
        w = lin.weight
        d_in, d_out = linear_dims(lin)
        self.window = tuple(window) if window is not None else None
        self.rank = int(rank)
        self.scaling = float(alpha) / self.rank
        width = self.window[1] - self.window[0] if self.window else d_out
        self.lora_A = nn.Parameter(torch.empty(self.rank, d_in, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(width, self.rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_gate = Gate(d_in, device=w.device, dtype=w.dtype) if gated else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        z = self.lora_dropout(x)
        if z.dtype != self.lora_A.dtype and not torch.is_autocast_enabled(z.device.type):
            z = z.to(self.lora_A.dtype)
        z = F.linear(F.linear(z, self.lora_A), self.lora_B)
        z = (z * self.lora_gate(x) if self.lora_gate is not None else z * self.scaling).to(out.dtype)
        if self.window is not None:
            z = F.pad(z, (self.window[0], out.shape[-1] - self.window[1]))
        return out + z

    def delta_weight(self) -> torch.Tensor:
        """``scaling · B A`` as a (d_out, d_in) matrix, zero outside its window: what folding this update into
        the base weight adds (ungated LoRA only; a gated update depends on the input, so it has no weight)."""
        if self.lora_gate is not None:
            raise PeftdsError("a gated LoRA update depends on its input: it cannot be folded into a weight")
        delta = (self.lora_B @ self.lora_A) * self.scaling
        if self.window is None:
            return delta
        full = delta.new_zeros(linear_dims(self.linear)[1], delta.shape[1])
        full[self.window[0] : self.window[1]] = delta
        return full

    def extra_repr(self) -> str:
        window = f", window={self.window}" if self.window else ""
        scaling = "gate" if self.lora_gate is not None else f"{self.scaling:g}"
        return f"rank={self.rank}, scaling={scaling}{window}"


@dataclass(frozen=True)
class LoRAConfig(Section):
    targets: list[str] | str = setting(
        ["q", "v"], "projections to adapt: any of q, k, v, o (attention) and gate, up, down (FFN), or 'q,v'"
    )
    alpha: int | float = setting(16, "update scale numerator: alpha / r (a gated update: its gate instead)", gt=0.0)
    dropout: float = setting(0.0, "dropout on the LoRA input", ge=0.0, lt=1.0)
    gated: bool = setting(False, "UniPELT gate: sigmoid(Linear(d_in, 1)(LoRA input)) scales the update, not alpha/r")

    def check(self, where: str) -> None:
        names = [s.strip() for s in self.targets.split(",")] if isinstance(self.targets, str) else self.targets
        if not names or any(t not in GENERIC_PROJECTIONS for t in names) or len(set(names)) != len(names):
            raise PeftdsError(
                f"{where}.targets must be distinct names among {', '.join(GENERIC_PROJECTIONS)}, got {self.targets!r}"
            )


def _targets(hp: Mapping[str, Any]) -> list[str]:
    t = hp["targets"]
    if isinstance(t, str):
        t = [s.strip() for s in t.split(",") if s.strip()]
    t = list(dict.fromkeys(t))
    bad = [n for n in t if n not in GENERIC_PROJECTIONS]
    if bad or not t:
        raise PeftdsError(
            f"lora.targets must be a non-empty subset of {','.join(GENERIC_PROJECTIONS)} (got {hp['targets']!r})"
        )
    return t


def _descend(parent: nn.Module, attr: str) -> tuple[nn.Module, str]:
    """(parent, attr) of the outermost LoRALinear, or of the Linear, under any non-LoRA peftds wrappers."""
    mod = getattr(parent, attr)
    while isinstance(mod, LinearWrapper) and not isinstance(mod, LoRALinear):
        parent, attr, mod = mod, "base_layer", mod.base_layer
    return parent, attr


def _windows_taken(mod: nn.Module) -> list[tuple[int, int] | None]:
    """Output windows already adapted by the chain of LoRALinear wrappers starting at ``mod``."""
    taken = []
    while isinstance(mod, LoRALinear):
        taken.append(mod.window)
        mod = mod.base_layer
    return taken


class LoRA(Strategy):
    name = "lora"
    letter = "L"
    size_symbol = "r"
    scalable = True
    config = LoRAConfig

    def cost(self, shape: LayerShape, size: int, hp: Mapping[str, Any]) -> int:
        targets = _targets(hp)
        gated = bool(hp.get("gated", False))
        dims: list[tuple[int, int]] = []
        for att in shape.attentions:
            dims += [att.proj_dims[t] for t in targets if t in ATTENTION_TARGETS]
        for t in targets:
            if t in FFN_TARGETS:
                if t not in shape.mlp_dims:
                    raise PeftdsError(f"lora target '{t}': this model's feed-forward has no '{t}' projection")
                dims.append(shape.mlp_dims[t])
        return sum(size * (d_in + d_out) + (gate_cost(d_in) if gated else 0) for d_in, d_out in dims)

    def apply(self, backbone: Backbone, layer: Layer, size: int, hp: Mapping[str, Any]) -> None:
        targets = _targets(hp)
        places: list[tuple[str, tuple[nn.Module, str], tuple[int, int] | None]] = []
        for site in layer.attentions:
            places += [(t, site.projections[t], site.slices.get(t)) for t in targets if t in ATTENTION_TARGETS]
        for t in targets:
            if t in FFN_TARGETS:
                if t not in layer.mlp:
                    raise PeftdsError(f"lora target '{t}': this model's feed-forward has no '{t}' projection")
                places.append((t, layer.mlp[t], layer.mlp_slices.get(t)))
        gated = bool(hp.get("gated", False))
        for t, where, window in places:
            parent, attr = _descend(*where)
            mod = getattr(parent, attr)
            taken = _windows_taken(mod)
            if None in taken or window in taken or (taken and window is None):
                raise PeftdsError(f"layer {layer.index}: projection '{t}' already has LoRA")
            if not hasattr(innermost_linear(mod), "weight"):
                raise PeftdsError(f"layer {layer.index}: projection '{t}' is {type(mod).__name__}, not a Linear")
            setattr(parent, attr, LoRALinear(mod, size, hp["alpha"], float(hp["dropout"]), gated, window))
