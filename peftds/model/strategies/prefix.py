"""Prefix tuning (SPEC §4): p trainable key and value vectors prepended in every attention site.

Mechanism
---------
In transformers 5 every supported family (T5, BART, BERT, RoBERTa) computes query/key/value in its
attention module, updates the KV cache, and then calls the attention function registered under
``config._attn_implementation`` as ``fn(module, query, key, value, attention_mask, scaling=...,
dropout=..., [position_bias=... for T5], **kwargs)`` with key/value shaped ``[B, h, S_k, d_kv]``.
This module registers two wrapped implementations with ``transformers.AttentionInterface``:
``"peftds_sdpa"`` (around the stock ``"sdpa"``) and ``"peftds_eager"`` (around the family's own
``eager_attention_forward``), and the same mask builders as their base under
``transformers.masking_utils.AttentionMaskInterface`` (so the models still build exactly the masks
of the base implementation). :meth:`Prefix.prepare` switches every config of the model (T5's encoder
and decoder stacks hold deep copies) to the wrapped name.

The wrapper passes through unchanged when the attention module has no ``peftds_prefix`` child.
Otherwise it prepends the prefix keys/values (expanded over the batch, no parameter copies) along
``S_k`` and extends what refers to key positions:

* the attention mask: ``None`` stays ``None``, except where sdpa would have applied causal masking
  implicitly (``is_causal`` and more than one query): then an explicit boolean mask is built that
  keeps the base's causal pattern (query i sees key j <= i) and lets every query see the prefix;
  boolean masks get ``True`` columns, additive float masks ``0`` columns (broadcast dims kept);
* T5's ``position_bias`` is padded with zeros: prefix keys get no relative position bias.

Extended masks / biases are cached by the identity of the source tensor (+ p), so a mask shared by
all layers of a forward is extended once. The prefix is added at attention time and never enters
the KV cache, so generation with and without cache agree.

Parametrisation (``reparam``): direct (default; key and value tensors ``[h, p, d_kv]`` per site,
initialised N(0, ``init_std``), cost 2·p·h·d_kv per site) or, with ``reparam: true``, one encoder
per layer: an embedding ``p x d_model`` (N(0, 1), as Li & Liang) through ``Linear(d_model, hidden)``,
tanh, ``Linear(hidden, sum over sites of 2·h·d_kv)`` (default Linear init); cost
p·d_model + d_model·hidden + hidden + hidden·out + out. The encoder is the block's child
``peftds_prefix_encoder``; each site's ``peftds_prefix`` reads its slice of the output.

Gate (``gated``, UniPELT; default false)
----------------------------------------
Every attention site gets its own gate ``g = sigmoid(Linear(d, 1)(x))`` (child ``peftds_prefix_gate``,
cost d + 1 per site, d = the query projection's input width) computed per query token from the
attention's query-side input ``x`` (the hidden state the query projection reads: for T5 the
normalised one, for cross-attention the decoder side), taken by a forward pre-hook on the query
Linear. The paper gates the prefix keys and values with a gate from the layer input; we gate the
prefix's *contribution to the output* per query token: with ``a_ij`` the attention weights of the
joint softmax over [prefix; sequence] (unchanged by the gate),

    out_i = sum_{j in seq} a_ij v_j + g_i · sum_{j in prefix} a_ij P_V_j

i.e. the prefix values are multiplied by ``g_i`` for query i (equivalently, the prefix positions'
post-softmax weights, not renormalised); the prefix keys are not gated (a per-query scalar on
``P_K`` would only rescale the prefix logits). ``g = 1`` is plain prefix tuning; ``g -> 0`` leaves
only the prefix's share of the softmax mass taken from the sequence. Both sums come from one
attention call whose values are ``[0; V]`` and ``[P_V; 0]`` side by side (value width 2·d_kv).
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from peftds.config.schema import Section, setting
from peftds.errors import PeftdsError
from peftds.model.backbones import Backbone, Layer, linear_dims
from peftds.model.strategies.base import LayerShape, Strategy, innermost_linear
from peftds.model.strategies.gating import Gate, gate_cost

WRAPPED = {"sdpa": "peftds_sdpa", "eager": "peftds_eager"}
PREFIX_ATTR = "peftds_prefix"
ENCODER_ATTR = "peftds_prefix_encoder"
GATE_ATTR = "peftds_prefix_gate"


# --------------------------------------------------------------------------- prefix parameters
class PrefixKV(nn.Module):
    """Directly parametrised prefix of one attention site: key and value ``[h, p, d_kv]``."""

    def __init__(
        self,
        num_heads: int,
        length: int,
        head_dim: int,
        init_std: float,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.key = nn.Parameter(torch.empty(num_heads, length, head_dim, device=device, dtype=dtype))
        self.value = nn.Parameter(torch.empty(num_heads, length, head_dim, device=device, dtype=dtype))
        nn.init.normal_(self.key, std=init_std)
        nn.init.normal_(self.value, std=init_std)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.key, self.value


class PrefixEncoder(nn.Module):
    """Reparametrised prefixes of one layer: ``mlp(embedding)`` -> ``[p, sum over sites 2·h·d_kv]``."""

    def __init__(
        self,
        length: int,
        d_model: int,
        hidden: int,
        out: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(length, d_model, device=device, dtype=dtype))
        self.mlp = nn.Sequential(
            nn.Linear(d_model, hidden, device=device, dtype=dtype),
            nn.Tanh(),
            nn.Linear(hidden, out, device=device, dtype=dtype),
        )

    def forward(self) -> torch.Tensor:
        return self.mlp(self.embedding)


class PrefixSlice(nn.Module):
    """One site's view of its layer's :class:`PrefixEncoder` (holds no parameters)."""

    def __init__(self, encoder: PrefixEncoder, offset: int, num_heads: int, head_dim: int):
        super().__init__()
        # not registered as a child: the encoder belongs to the block (counted and saved once)
        object.__setattr__(self, "encoder", encoder)
        self.offset, self.num_heads, self.head_dim = offset, num_heads, head_dim

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        width = 2 * self.num_heads * self.head_dim
        full = self.encoder()
        kv = full[:, self.offset : self.offset + width].reshape(full.shape[0], 2, self.num_heads, self.head_dim)
        kv = kv.permute(1, 2, 0, 3)  # [2, h, p, d_kv]
        return kv[0], kv[1]

    def extra_repr(self) -> str:
        return f"offset={self.offset}, num_heads={self.num_heads}, head_dim={self.head_dim}"


# --------------------------------------------------------------------------- mask / bias extension
_EXT_CACHE: dict[tuple[int, int], tuple[weakref.ref, torch.Tensor]] = {}
_CAUSAL_CACHE: dict[tuple, torch.Tensor] = {}


def _left_pad(t: torch.Tensor, p: int, fill: bool | float) -> torch.Tensor:
    pad = torch.full((*t.shape[:-1], p), fill, dtype=t.dtype, device=t.device)
    return torch.cat([pad, t], dim=-1)


def extended_mask(src: torch.Tensor, p: int) -> torch.Tensor:
    """``src`` with p leading key columns that block nothing (True for bool masks, 0 otherwise)."""
    fill = True if src.dtype == torch.bool else 0.0
    # Under torch.compile the id()-keyed cache would force a recompile every step: pad in the graph.
    if (src.requires_grad and torch.is_grad_enabled()) or torch.compiler.is_compiling():
        return _left_pad(src, p, fill)
    key = (id(src), p)
    hit = _EXT_CACHE.get(key)
    if hit is not None and hit[0]() is src:
        return hit[1]
    out = _left_pad(src, p, fill)
    for k in [k for k, (ref, _) in _EXT_CACHE.items() if ref() is None]:
        del _EXT_CACHE[k]
    if len(_EXT_CACHE) >= 32:
        _EXT_CACHE.clear()
    _EXT_CACHE[key] = (weakref.ref(src), out)
    return out


def causal_with_prefix(q_len: int, kv_len: int, p: int, device: torch.device) -> torch.Tensor:
    """Boolean ``[1, 1, q, p + kv]``: every query sees the prefix, then key j <= query i."""
    if torch.compiler.is_compiling():
        causal = torch.arange(q_len, device=device)[:, None] >= torch.arange(kv_len, device=device)[None, :]
        return _left_pad(causal, p, True)[None, None]
    key = (q_len, kv_len, p, str(device))
    mask = _CAUSAL_CACHE.get(key)
    if mask is None:
        causal = torch.arange(q_len, device=device)[:, None] >= torch.arange(kv_len, device=device)[None, :]
        mask = _left_pad(causal, p, True)[None, None]
        if len(_CAUSAL_CACHE) >= 32:
            _CAUSAL_CACHE.clear()
        _CAUSAL_CACHE[key] = mask
    return mask


# --------------------------------------------------------------------------- attention functions
def _generic_eager(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    position_bias: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fallback eager attention (used only if a family module has no ``eager_attention_forward``)."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    w = torch.matmul(query, key.transpose(2, 3)) * scaling
    if position_bias is not None:
        w = w + position_bias
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            w = w.masked_fill(~attention_mask, torch.finfo(w.dtype).min)
        else:
            w = w + attention_mask
    w = nn.functional.softmax(w, dim=-1)
    w = nn.functional.dropout(w, p=dropout, training=module.training)
    return torch.matmul(w, value).transpose(1, 2).contiguous(), w


_EAGER_BY_CLASS: dict[type, Callable] = {}


def _family_eager(module: nn.Module) -> Callable:
    cls = type(module)
    fn = _EAGER_BY_CLASS.get(cls)
    if fn is None:
        fn = getattr(sys.modules.get(cls.__module__), "eager_attention_forward", None) or _generic_eager
        _EAGER_BY_CLASS[cls] = fn
    return fn


def _make_attention(base: str) -> Callable:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def attention(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if base == "sdpa":
            fn = ALL_ATTENTION_FUNCTIONS["sdpa"]
        else:
            fn = _family_eager(module)
        prefix = module._modules.get(PREFIX_ATTR)
        if prefix is None:
            return fn(module, query, key, value, attention_mask, *args, **kwargs)
        pk, pv = prefix()
        p, batch = pk.shape[1], key.shape[0]
        key = torch.cat([pk.to(key.dtype).unsqueeze(0).expand(batch, -1, -1, -1), key], dim=2)
        pv = pv.to(value.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
        gate = module._modules.get(GATE_ATTR)
        if gate is not None:
            # [0; V] and [P_V; 0] side by side: one call gives the sequence's and the prefix's parts
            seq = torch.cat([pv.new_zeros(pv.shape), value], dim=2)
            pre = torch.cat([pv, value.new_zeros(value.shape)], dim=2)
            value = torch.cat([seq, pre], dim=-1)
        else:
            value = torch.cat([pv, value], dim=2)
        if attention_mask is not None:
            attention_mask = extended_mask(attention_mask, p)
        elif base == "sdpa" and query.shape[2] > 1:
            is_causal = kwargs.get("is_causal")
            if is_causal is None:
                is_causal = getattr(module, "is_causal", True)
            if is_causal:
                attention_mask = causal_with_prefix(query.shape[2], key.shape[2] - p, p, query.device)
        if kwargs.get("position_bias") is not None:
            kwargs["position_bias"] = extended_mask(kwargs["position_bias"], p)
        out, weights = fn(module, query, key, value, attention_mask, *args, **kwargs)
        if gate is None:
            return out, weights
        d = pv.shape[-1]
        g = gate.take()  # [B, q, 1], per query token; out is [B, q, h, 2·d_kv]
        return out[..., :d] + g.unsqueeze(-1).to(out.dtype) * out[..., d:], weights

    attention.__name__ = f"peftds_{base}_attention"
    return attention


def register_attention() -> None:
    """Register the wrapped attention and mask implementations (idempotent; done at import)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

    masks = {"sdpa": sdpa_mask, "eager": eager_mask}
    for base, name in WRAPPED.items():
        AttentionInterface.register(name, _make_attention(base))
        AttentionMaskInterface.register(name, masks[base])


register_attention()


def _all_configs(model: nn.Module) -> list:
    from transformers import PretrainedConfig

    found: dict[int, Any] = {}
    todo = [getattr(model, "config", None)] + [getattr(m, "config", None) for m in model.modules()]
    while todo:
        cfg = todo.pop()
        if not isinstance(cfg, PretrainedConfig) or id(cfg) in found:
            continue
        found[id(cfg)] = cfg
        todo.extend(getattr(cfg, k, None) for k in getattr(cfg, "sub_configs", {}) or {})
    return list(found.values())


def use_prefix_attention(model: nn.Module) -> None:
    """Switch every config of ``model`` from sdpa/eager to the prefix-aware wrapped implementation."""
    for cfg in _all_configs(model):
        impl = cfg._attn_implementation or "eager"
        if impl in WRAPPED.values():
            continue
        if impl not in WRAPPED:
            raise PeftdsError(f"prefix tuning needs attn_implementation sdpa or eager (model uses '{impl}')")
        cfg._attn_implementation_internal = WRAPPED[impl]


# --------------------------------------------------------------------------- strategy
@dataclass(frozen=True)
class PrefixConfig(Section):
    reparam: bool = setting(False, "MLP reparametrisation (its parameters count against the budget)")
    reparam_hidden: int = setting(64, "hidden width of the reparametrisation MLP", ge=1)
    init_std: float = setting(0.02, "std of the prefix vectors' normal initialisation", ge=0.0)
    gated: bool = setting(False, "UniPELT gate: scale the prefix's output share by sigmoid(Linear(d, 1)(attn input))")


class Prefix(Strategy):
    name = "prefix"
    letter = "P"
    size_symbol = "p"
    scalable = True
    config = PrefixConfig

    def cost(self, shape: LayerShape, size: int, hp: Mapping[str, Any]) -> int:
        kv = sum(2 * a.kv_heads * a.head_dim for a in shape.attentions)
        gates = sum(gate_cost(a.proj_dims["q"][0]) for a in shape.attentions) if hp.get("gated", False) else 0
        if not hp["reparam"]:
            return size * kv + gates
        d, hidden = shape.d_model, int(hp["reparam_hidden"])
        return size * d + d * hidden + hidden + hidden * kv + kv + gates

    def prepare(self, backbone: Backbone, hp: Mapping[str, Any]) -> None:
        use_prefix_attention(backbone.model)

    def apply(self, backbone: Backbone, layer: Layer, size: int, hp: Mapping[str, Any]) -> None:
        if size < 1:
            raise PeftdsError(f"prefix length must be >= 1 (got {size})")
        if not all(s.module.config._attn_implementation in WRAPPED.values() for s in layer.attentions):
            use_prefix_attention(backbone.model)
        for site in layer.attentions:
            if PREFIX_ATTR in site.module._modules:
                raise PeftdsError(f"layer {layer.index}: attention already has a prefix")
        w = innermost_linear(layer.attentions[0].linear("q")).weight
        if hp.get("gated", False):
            for site in layer.attentions:
                q = innermost_linear(site.linear("q"))
                gate = Gate(linear_dims(q)[0], device=w.device, dtype=w.dtype)
                site.module.add_module(GATE_ATTR, gate)
                q.register_forward_pre_hook(gate.capture)
        if not hp["reparam"]:
            for site in layer.attentions:
                prefix = PrefixKV(site.kv_heads, size, site.head_dim, float(hp["init_std"]), w.device, w.dtype)
                site.module.add_module(PREFIX_ATTR, prefix)
            return
        out = sum(2 * s.kv_heads * s.head_dim for s in layer.attentions)
        encoder = PrefixEncoder(size, layer.d_model, int(hp["reparam_hidden"]), out, w.device, w.dtype)
        layer.block.add_module(ENCODER_ATTR, encoder)
        offset = 0
        for site in layer.attentions:
            site.module.add_module(PREFIX_ATTR, PrefixSlice(encoder, offset, site.kv_heads, site.head_dim))
            offset += 2 * site.kv_heads * site.head_dim
