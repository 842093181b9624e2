"""Bottleneck adapters (SPEC §4).

An adapter is ``up(act(down(z)))`` with ``down: d -> b`` and ``up: b -> d`` (both with bias), ``up``
zero-initialised so the model's outputs are unchanged before training (``down`` keeps the default
``nn.Linear`` weight initialisation and a zero bias, so ReLU units start alive whatever the scale
of the hidden states). Cost per site 2·d·b + b + d (d = d_model, b = bottleneck size).

Sites (hyper-parameter ``placement``): ``"ffn"`` (default) = the feed-forward sublayer,
``"attn"`` = every attention sublayer of the layer (self, and cross in decoder layers), ``"both"``.
A site is the module whose output is the sublayer output before dropout and the residual add
(``Layer.ffn_out`` / ``Layer.attn_out``: T5 ``wo`` / ``o``, BART ``fc2`` / ``out_proj``, BERT
``output.dense`` / ``attention.output.dense``). That module is replaced by :class:`AdapterWrapped`,
which keeps it as the child ``base_layer`` (stable state-dict names; composes with a LoRA wrapper
already there and with BitFit biases on the innermost Linear).

``variant``:

* ``"sequential"`` (Houlsby): ``y = h + adapter(h)`` with ``h`` the site module's output.
* ``"parallel"`` (He et al. 2022): ``y = h + adapter(x)`` with ``x`` the *sublayer input*, i.e. the
  hidden state (d_model wide) the sublayer reads, not the site module's own input (FFN output
  projections read d_ff). ``x`` is taken from a forward pre-hook on the sublayer's first Linear:
  for an attention site its query projection (its input is the normalised / raw hidden state the
  attention reads for its queries), for the FFN the first FFN Linear (T5 ``wi``/``wi_0``, BART
  ``fc1``, BERT ``intermediate.dense``). The hook stores the tensor on the wrapper, which consumes
  it in the same forward (gradient checkpointing re-runs both, in the same order).

``activation``: relu (default), gelu, tanh, silu.

``scale`` (s, default 1): the adapter's output is multiplied by s, ``y = h + s·adapter(z)`` (He et al.
use s = 4 for the scaled parallel adapter of PA and MAM). No parameters; cost unchanged.

``gated`` (UniPELT, default false): the adapter output is also multiplied by a learned gate computed
from the adapter's own input, ``y = h + s·g(z)·adapter(z)`` with ``g(z) = sigmoid(z W_g^T + b_g)``
one scalar per token (:class:`~peftds.model.strategies.gating.Gate`, ``Linear(d, 1)``). Cost per
site grows by d + 1. Identity at init still holds (``up`` starts at zero whatever the gate).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from peftds.config.schema import Section, convert, setting
from peftds.errors import PeftdsError
from peftds.model.backbones import Backbone, Layer, linear_dims
from peftds.model.strategies.base import LayerShape, LinearWrapper, Strategy, innermost_linear
from peftds.model.strategies.gating import Gate, gate_cost

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh, "silu": F.silu}
PLACEMENTS = ("ffn", "attn", "both")
VARIANTS = ("sequential", "parallel")


class Bottleneck(nn.Module):
    """``scale · [gate(z) ·] up(act(down(z)))``; ``up`` starts at zero."""

    def __init__(
        self,
        d: int,
        b: int,
        activation: str,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        scale: float = 1.0,
        gated: bool = False,
    ):
        super().__init__()
        if b < 1:
            raise PeftdsError(f"adapter bottleneck must be >= 1 (got {b})")
        self.activation = activation
        self.scale = float(scale)
        self.down = nn.Linear(d, b, device=device, dtype=dtype)
        self.up = nn.Linear(b, d, device=device, dtype=dtype)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.gate = Gate(d, device=device, dtype=dtype) if gated else None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.up(ACTIVATIONS[self.activation](self.down(z)))
        if self.gate is not None:
            out = out * self.gate(z)
        return out * self.scale if self.scale != 1.0 else out

    def extra_repr(self) -> str:
        return f"activation={self.activation}, scale={self.scale:g}"


class AdapterWrapped(LinearWrapper):
    """A sublayer output module followed by an adapter (sequential or parallel)."""

    def __init__(self, base_layer: nn.Module, adapter: Bottleneck, variant: str):
        super().__init__(base_layer)
        self.adapter = adapter
        self.variant = variant
        self.stash: torch.Tensor | None = None

    def capture(self, module: nn.Module, args: tuple) -> None:
        """Forward pre-hook on the sublayer's first Linear (parallel variant)."""
        self.stash = args[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base_layer(x)
        if self.variant == "parallel":
            z, self.stash = self.stash, None
            if z is None:
                raise RuntimeError("parallel adapter: the sublayer input was not captured in this forward")
        else:
            z = h
        w = self.adapter.down.weight
        if z.dtype != w.dtype and not torch.is_autocast_enabled(z.device.type):
            z = z.to(w.dtype)
        return h + self.adapter(z).to(h.dtype)

    def extra_repr(self) -> str:
        return f"variant={self.variant}"


@dataclass(frozen=True)
class AdapterConfig(Section):
    placement: str = setting("ffn", "adapter sites: after the FFN, after attention, or both", choices=PLACEMENTS)
    activation: str = setting("relu", "bottleneck nonlinearity", choices=tuple(ACTIVATIONS))
    variant: str = setting("sequential", "sequential (Houlsby) or parallel (He et al.)", choices=VARIANTS)
    scale: float = setting(1.0, "multiplies the adapter output (He et al.'s s; PA and MAM use 4)", gt=0.0)
    gated: bool = setting(False, "UniPELT gate: scale the output by sigmoid(Linear(d, 1)(adapter input))")


def _check(hp: Mapping[str, Any]) -> AdapterConfig:
    try:  # cost() runs for every layer of every sampled design: check each distinct setting once
        return _checked(tuple(sorted(hp.items())))
    except TypeError:  # an unhashable value: let the check name it
        return convert(AdapterConfig, hp, "design.hparams.adapter")


@lru_cache(maxsize=128)
def _checked(items: tuple[tuple[str, Any], ...]) -> AdapterConfig:
    return convert(AdapterConfig, dict(items), "design.hparams.adapter")


def _ffn_input_linear(layer: Layer) -> nn.Module:
    """The first Linear of the FFN sublayer (reads the FFN input)."""
    attn = {(id(p), a) for site in layer.attentions for p, a in site.projections.values()}
    attn |= {(id(p), a) for p, a in layer.attn_out}
    out = (id(layer.ffn_out[0]), layer.ffn_out[1])
    for parent, attr in layer.linears:
        key = (id(parent), attr)
        if key not in attn and key != out:
            return getattr(parent, attr)
    raise PeftdsError(f"layer {layer.index}: cannot find the feed-forward input Linear for a parallel adapter")


class Adapter(Strategy):
    name = "adapter"
    letter = "A"
    size_symbol = "b"
    scalable = True
    config = AdapterConfig

    def cost(self, shape: LayerShape, size: int, hp: Mapping[str, Any]) -> int:
        c = _check(hp)
        sites = (c.placement in ("ffn", "both")) + (len(shape.attentions) if c.placement in ("attn", "both") else 0)
        d = shape.d_model
        return sites * (2 * d * size + size + d + (gate_cost(d) if c.gated else 0))

    def apply(self, backbone: Backbone, layer: Layer, size: int, hp: Mapping[str, Any]) -> None:
        c = _check(hp)
        placement, activation, variant = c.placement, c.activation, c.variant
        sites: list[tuple[tuple[nn.Module, str], nn.Module | None]] = []
        parallel = variant == "parallel"
        if placement in ("attn", "both"):
            for site, where in zip(layer.attentions, layer.attn_out):
                sites.append((where, site.linear("q") if parallel else None))
        if placement in ("ffn", "both"):
            sites.append((layer.ffn_out, _ffn_input_linear(layer) if parallel else None))
        for (parent, attr), source in sites:
            mod = getattr(parent, attr)
            if isinstance(mod, AdapterWrapped):
                raise PeftdsError(f"layer {layer.index}: '{attr}' already has an adapter")
            w = innermost_linear(mod).weight
            adapter = Bottleneck(layer.d_model, size, activation, w.device, w.dtype, scale=c.scale, gated=c.gated)
            wrapped = AdapterWrapped(mod, adapter, variant)
            if source is not None:
                src_in = linear_dims(innermost_linear(source))[0]
                if src_in != layer.d_model:
                    raise PeftdsError(f"layer {layer.index}: parallel adapter input has width {src_in}, not d_model")
                source.register_forward_pre_hook(wrapped.capture)
            setattr(parent, attr, wrapped)
