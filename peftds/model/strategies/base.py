"""What every PEFT strategy provides (SPEC §4), and the layer shapes cost formulas read.

A strategy acts on one layer at a time with one size (adapter bottleneck b, prefix length p, LoRA
rank r; BitFit has no size). ``cost`` is the exact number of trainable parameters ``apply`` adds or
unfreezes on that layer: the budget code (peftds.design.budget) sizes designs with ``cost`` before anything
is built, and peftds.design.apply checks the built model's ``requires_grad`` count against it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from peftds.config.schema import Section, convert
from peftds.model.backbones import Backbone, Layer, linear_dims


@dataclass(frozen=True)
class AttnShape:
    kind: str  # "self" | "cross"
    kv_heads: int  # key/value heads (the heads a prefix gets)
    head_dim: int
    proj_dims: Mapping[str, tuple[int, int]]  # q/k/v/o -> (in_features, out_features of its slice)


class LinearWrapper(nn.Module):
    """Base of peftds wrappers around a Linear: the wrapped module is the child ``base_layer``."""

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer

    @property
    def linear(self) -> nn.Module:
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
        return linear_dims(self.linear)[0]

    @property
    def out_features(self) -> int:
        return linear_dims(self.linear)[1]


def innermost_linear(module: nn.Module) -> nn.Module:
    """Follow ``base_layer`` links down to the original Linear."""
    while isinstance(module, LinearWrapper):
        module = module.base_layer
    return module


def _dims(where: tuple[nn.Module, str], window: tuple[int, int] | None) -> tuple[int, int]:
    d_in, d_out = linear_dims(innermost_linear(getattr(*where)))
    return d_in, (window[1] - window[0]) if window else d_out


@dataclass(frozen=True)
class LayerShape:
    """Everything a cost formula needs about one layer, with no tensors attached."""

    index: int
    stack: str
    d_model: int
    attentions: tuple[AttnShape, ...]
    linears: tuple[tuple[int, bool], ...]  # (out_features, has_bias) of every backbone Linear in the block
    norm_biases: tuple[int, ...]  # size of each norm layer's bias (norms without bias omitted)
    mlp_dims: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # gate/up/down -> (in, out)

    @classmethod
    def of(cls, layer: Layer) -> LayerShape:
        attns = []
        for site in layer.attentions:
            dims = {name: _dims(where, site.slices.get(name)) for name, where in site.projections.items()}
            attns.append(AttnShape(site.kind, site.kv_heads, site.head_dim, dims))
        lins = []
        for where in layer.linears:
            base = innermost_linear(layer.module_at(where))
            lins.append((linear_dims(base)[1], base.bias is not None))
        norm_biases = tuple(n.bias.numel() for n in layer.norms if getattr(n, "bias", None) is not None)
        mlp = {name: _dims(where, layer.mlp_slices.get(name)) for name, where in layer.mlp.items()}
        return cls(layer.index, layer.stack, layer.d_model, tuple(attns), tuple(lins), norm_biases, mlp)


class Strategy(ABC):
    """One PEFT method applied per layer."""

    name: str
    letter: str  # one capital in compact design strings, e.g. "A+L"
    size_symbol: str | None = None  # the size's symbol (b, p, r); None for a fixed-cost strategy
    scalable: bool = True  # False: fixed cost (BitFit)
    config: type[Section]  # typed hyper-parameters (overridable per design as design.hparams.<name>)

    @property
    def defaults(self) -> dict[str, Any]:
        return convert(self.config, {}, f"design.hparams.{self.name}").to_dict()

    def hparams(self, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
        """The hyper-parameters with defaults filled in; unknown keys and bad values raise PeftdsError."""
        return convert(self.config, overrides, f"design.hparams.{self.name}").to_dict()

    @abstractmethod
    def cost(self, shape: LayerShape, size: int, hp: Mapping[str, Any]) -> int:
        """Exact trainable parameters this strategy adds to a layer of this shape at this size."""

    @abstractmethod
    def apply(self, backbone: Backbone, layer: Layer, size: int, hp: Mapping[str, Any]) -> None:
        """Add this strategy to one layer; new/unfrozen parameters have requires_grad=True."""

    def prepare(self, backbone: Backbone, hp: Mapping[str, Any]) -> None:  # noqa: B027 - an optional hook
        """Model-level set-up, called once before the first ``apply`` (e.g. attention hooks)."""
