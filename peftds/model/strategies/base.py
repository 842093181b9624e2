"""What every PEFT strategy provides (SPEC §4), and the layer shapes cost formulas read.

A strategy acts on one layer at a time with one size (adapter bottleneck b, prefix length p, LoRA
rank r; BitFit has no size). ``cost`` is the exact number of trainable parameters ``apply`` adds or
unfreezes on that layer: the budget code (peftds.design.budget) sizes designs with ``cost`` before anything
is built, and peftds.design.apply checks the built model's ``requires_grad`` count against it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from peftds.config.schema import Section, convert
from peftds.model.backbones import Backbone, Layer


@dataclass(frozen=True)
class AttnShape:
    kind: str  # "self" | "cross"
    num_heads: int
    head_dim: int
    proj_dims: Mapping[str, tuple[int, int]]  # q/k/v/o -> (in_features, out_features)


@dataclass(frozen=True)
class LayerShape:
    """Everything a cost formula needs about one layer, with no tensors attached."""

    index: int
    stack: str
    d_model: int
    attentions: tuple[AttnShape, ...]
    linears: tuple[tuple[int, bool], ...]  # (out_features, has_bias) of every backbone Linear in the block
    norm_biases: tuple[int, ...]  # size of each norm layer's bias (norms without bias omitted)

    @classmethod
    def of(cls, layer: Layer) -> LayerShape:
        attns = []
        for site in layer.attentions:
            dims = {}
            for name in site.projections:
                lin = site.linear(name)
                base = getattr(lin, "base_layer", lin)  # a LoRA-wrapped projection keeps its base Linear
                dims[name] = (base.in_features, base.out_features)
            attns.append(AttnShape(site.kind, site.num_heads, site.head_dim, dims))
        lins = []
        for where in layer.linears:
            lin = layer.module_at(where)
            base = getattr(lin, "base_layer", lin)
            lins.append((base.out_features, base.bias is not None))
        norm_biases = tuple(n.bias.numel() for n in layer.norms if getattr(n, "bias", None) is not None)
        return cls(layer.index, layer.stack, layer.d_model, tuple(attns), tuple(lins), norm_biases)


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
