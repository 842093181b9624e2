"""BitFit (SPEC §4): train every bias of the layer's Linear and norm layers.

Linears without a bias (all of T5's) get a zero-initialised one (``lin.bias = nn.Parameter(zeros)``,
which ``F.linear`` picks up), so outputs are unchanged before training. Norms without a bias
(T5LayerNorm / RMS norms) get nothing. Wrapped projections (LoRA, adapter) are handled through their
innermost Linear. BitFit has no size: cost = sum of out_features over the layer's Linears + sum of
the norm bias sizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from peftds.config.schema import Section
from peftds.model.backbones import Backbone, Layer, linear_dims
from peftds.model.strategies.base import LayerShape, Strategy, innermost_linear


@dataclass(frozen=True)
class BitFitConfig(Section):
    """BitFit has no hyper-parameters."""


class BitFit(Strategy):
    name = "bitfit"
    letter = "B"
    scalable = False
    config = BitFitConfig
    defaults: Mapping[str, Any] = {}

    def cost(self, shape: LayerShape, size: int, hp: Mapping[str, Any]) -> int:
        return sum(o for o, _ in shape.linears) + sum(shape.norm_biases)

    def apply(self, backbone: Backbone, layer: Layer, size: int, hp: Mapping[str, Any]) -> None:
        seen: set[int] = set()
        for where in layer.linears:
            lin = innermost_linear(layer.module_at(where))
            if id(lin) in seen:
                continue
            seen.add(id(lin))
            if lin.bias is None:
                w = lin.weight
                lin.bias = nn.Parameter(torch.zeros(linear_dims(lin)[1], device=w.device, dtype=w.dtype))
            lin.bias.requires_grad_(True)
        for norm in layer.norms:
            bias = getattr(norm, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias.requires_grad_(True)
