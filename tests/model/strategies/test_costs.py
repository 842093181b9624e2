"""cost() equals the trainable parameters apply() adds, for every strategy, family and variant."""

from __future__ import annotations

import pytest
import torch

from peftds.model.strategies import STRATEGIES, LayerShape
from peftds.model.strategies.adapter import AdapterWrapped
from peftds.model.strategies.lora import LoRALinear
from peftds.model.strategies.prefix import ENCODER_ATTR, PREFIX_ATTR
from tests.model.helpers import FAMILIES, apply_plan, frozen, trainable

VARIANTS = [
    ("adapter", {}),
    ("adapter", {"placement": "attn"}),
    ("adapter", {"placement": "both", "variant": "parallel", "activation": "gelu"}),
    ("lora", {}),
    ("lora", {"targets": ["q", "k", "v", "o"]}),
    ("prefix", {}),
    ("prefix", {"reparam": True, "reparam_hidden": 16}),
    ("bitfit", {}),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name,over", VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)])
@pytest.mark.parametrize("size", [1, 3])
def test_cost_matches_trainable_uniform(family, name, over, size):
    model, bb = frozen(family)
    forecast = apply_plan(bb, {layer.index: {name: (size, over)} for layer in bb.layers})
    assert forecast == trainable(model) > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_cost_per_layer_sizes_and_all_four_on_one_layer(family):
    model, bb = frozen(family)
    big = {"targets": "q,k,v,o"}
    plan = {}
    for layer in bb.layers:
        i = layer.index
        plan[i] = {
            "bitfit": (0, {}),
            "lora": (1 + i, big if i % 2 else {}),
            "adapter": (2 + 2 * i, {"placement": "both"} if i % 2 == 0 else {"variant": "parallel"}),
            "prefix": (1 + (i % 3), {"reparam": i == 1}),
        }
    forecast = apply_plan(bb, plan)
    assert forecast == trainable(model)
    # every layer's own forecast matches what was added on it (shapes are read after wrapping)
    assert all(LayerShape.of(layer).d_model == layer.d_model for layer in bb.layers)


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_shape_reads_through_wrappers(family):
    """LayerShape (used by the budget code) is unchanged by wrapping projections."""
    _model, bb = frozen(family)
    before = [LayerShape.of(layer) for layer in bb.layers]
    apply_plan(
        bb,
        {
            layer.index: {"lora": (2, {"targets": ["q", "k", "v", "o"]}), "adapter": (2, {"placement": "both"})}
            for layer in bb.layers
        },
    )
    after = [LayerShape.of(layer) for layer in bb.layers]
    assert [s.attentions for s in before] == [s.attentions for s in after]
    assert [s.linears for s in before] == [s.linears for s in after]


def test_bitfit_cost_formula_t5_and_bert():
    _, bb = frozen("t5")
    shape = LayerShape.of(bb.layers[0])  # encoder: q,k,v,o (64,64,64,32) + wi 64 + wo 32; RMS norms: none
    assert STRATEGIES["bitfit"].cost(shape, 0, {}) == 64 * 3 + 32 + 64 + 32
    _, bb = frozen("bert")
    shape = LayerShape.of(bb.layers[0])  # 4x32 + 64 + 32 + two LayerNorm biases of 32
    assert STRATEGIES["bitfit"].cost(shape, 1, {}) == 4 * 32 + 64 + 32 + 2 * 32


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_per_layer_sizes_give_those_shapes(family):
    _model, bb = frozen(family)
    sizes = {0: 2, 1: 5}
    plan = {i: {"adapter": (s, {"placement": "both"}), "lora": (s, {}), "prefix": (s, {})} for i, s in sizes.items()}
    apply_plan(bb, plan)
    for i, s in sizes.items():
        layer = bb.layers[i]
        ffn = layer.module_at(layer.ffn_out)
        assert isinstance(ffn, AdapterWrapped) and ffn.adapter.down.weight.shape == (s, layer.d_model)
        for site, where in zip(layer.attentions, layer.attn_out):
            ad = layer.module_at(where)
            assert isinstance(ad, AdapterWrapped) and ad.adapter.up.weight.shape == (layer.d_model, s)
            q = site.linear("q")
            assert isinstance(q, LoRALinear) and q.lora_A.shape[0] == s and q.lora_B.shape[1] == s
            pk, pv = getattr(site.module, PREFIX_ATTR)()
            assert pk.shape == pv.shape == (site.kv_heads, s, site.head_dim)
    for layer in bb.layers[2:]:  # untouched layers
        assert not isinstance(layer.module_at(layer.ffn_out), AdapterWrapped)
        assert all(PREFIX_ATTR not in s.module._modules for s in layer.attentions)


def test_reparam_prefix_encoder_per_layer():
    model, bb = frozen("t5")
    apply_plan(bb, {2: {"prefix": (3, {"reparam": True, "reparam_hidden": 8})}})
    dec = bb.layers[2]
    enc = getattr(dec.block, ENCODER_ATTR)
    assert enc.embedding.shape == (3, 32)
    assert enc.mlp[2].out_features == 2 * (2 * 4 * 16)  # self + cross, each 2·h·d_kv
    # the slices do not register the encoder a second time
    names = [n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad]
    assert len(names) == 5 and all(ENCODER_ATTR in n for n in names)
    pk, pv = getattr(dec.attentions[1].module, PREFIX_ATTR)()
    assert pk.shape == (4, 3, 16)
    torch.testing.assert_close(pv, enc()[:, 3 * 64 + 0 : 4 * 64].reshape(3, 4, 16).transpose(0, 1))


def test_unknown_hparams_rejected():
    from peftds.errors import PeftdsError

    _, bb = frozen("bert")
    layer = bb.layers[0]
    with pytest.raises(PeftdsError):
        STRATEGIES["lora"].apply(bb, layer, 2, {"targets": ["x"], "alpha": 16, "dropout": 0.0})
    with pytest.raises(PeftdsError):
        STRATEGIES["adapter"].apply(bb, layer, 2, {"placement": "mid", "activation": "relu", "variant": "sequential"})
    with pytest.raises(PeftdsError):
        STRATEGIES["prefix"].hparams({"length": 3})
