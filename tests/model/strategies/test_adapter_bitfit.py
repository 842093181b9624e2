"""Adapter and BitFit: identity at initialisation, placements, parallel semantics, biases."""

from __future__ import annotations

import pytest
import torch

from peftds.model.strategies.adapter import AdapterWrapped
from tests.model.helpers import FAMILIES, apply_plan, batch, frozen, outputs, uniform_plan


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("placement", ["ffn", "attn", "both"])
@pytest.mark.parametrize("variant", ["sequential", "parallel"])
def test_adapter_identity_at_init(family, placement, variant):
    model, bb = frozen(family)
    inputs = batch(family)
    with torch.no_grad():
        before = outputs(model, inputs)
        apply_plan(
            bb, uniform_plan(bb, {"adapter": (3, {"placement": placement, "variant": variant, "activation": "tanh"})})
        )
        after = outputs(model, inputs)
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    n_sites = sum(isinstance(m, AdapterWrapped) for m in model.modules())
    per_layer = [(placement != "attn") + (len(layer.attentions) if placement != "ffn" else 0) for layer in bb.layers]
    assert n_sites == sum(per_layer)


def _hook_io(module):
    store = {}
    h1 = module.register_forward_pre_hook(lambda m, a: store.__setitem__("in", a[0].detach()))
    h2 = module.register_forward_hook(lambda m, a, o: store.__setitem__("out", o.detach()))
    return store, (h1, h2)


@pytest.mark.parametrize(
    "family,variant", [("bart", "parallel"), ("t5", "parallel"), ("bert", "sequential"), ("t5", "sequential")]
)
def test_adapter_formula(family, variant):
    """sequential: y = h + up(act(down(h))); parallel: y = h + up(act(down(x))) with x the sublayer input."""
    model, bb = frozen(family)
    apply_plan(bb, {0: {"adapter": (4, {"placement": "both", "variant": variant, "activation": "gelu"})}})
    layer = bb.layers[0]
    ffn = layer.module_at(layer.ffn_out)
    att = layer.module_at(layer.attn_out[0])
    for w in (ffn, att):
        with torch.no_grad():
            w.adapter.up.weight.normal_()
            w.adapter.up.bias.normal_()
    # sublayer inputs: what the FFN's first Linear and the query projection read
    if family == "bart":
        ffn_in_mod = layer.block.fc1
    elif family == "t5":
        ffn_in_mod = layer.block.layer[-1].DenseReluDense.wi
    else:
        ffn_in_mod = layer.block.intermediate.dense
    sx, hs = zip(*[_hook_io(m) for m in (ffn_in_mod, layer.attentions[0].linear("q"), ffn.base_layer, att.base_layer)])
    fo, ho = _hook_io(ffn)
    ao, ho2 = _hook_io(att)
    with torch.no_grad():
        model(**batch(family))
        for wrapper, src, base, got in ((ffn, sx[0], sx[2], fo), (att, sx[1], sx[3], ao)):
            z = src["in"] if variant == "parallel" else base["out"]
            ad = wrapper.adapter
            expected = base["out"] + ad.up(torch.nn.functional.gelu(ad.down(z)))
            torch.testing.assert_close(got["out"], expected)
            assert (got["out"] - base["out"]).abs().max() > 1e-3
    for h in (*[x for pair in hs for x in pair], *ho, *ho2):
        h.remove()


def test_adapter_composes_with_lora_and_bitfit_on_same_projection():
    model, bb = frozen("t5")
    apply_plan(
        bb, {0: {"bitfit": (0, {}), "lora": (2, {"targets": ["q", "v", "o"]}), "adapter": (2, {"placement": "attn"})}}
    )
    o = bb.layers[0].attentions[0].linear("o")
    assert isinstance(o, AdapterWrapped)
    assert type(o.base_layer).__name__ == "LoRALinear"
    assert o.base_layer.base_layer.bias is not None and o.base_layer.base_layer.bias.requires_grad
    assert o.weight is o.base_layer.base_layer.weight and o.in_features == 64 and o.out_features == 32
    assert "encoder.block.0.layer.0.SelfAttention.o.base_layer.base_layer.weight" in model.state_dict()


@pytest.mark.parametrize("family", FAMILIES)
def test_bitfit_identity_at_init_and_biases(family):
    model, bb = frozen(family)
    inputs = batch(family)
    with torch.no_grad():
        before = outputs(model, inputs)
        apply_plan(bb, uniform_plan(bb, {"bitfit": (1, {})}))
        after = outputs(model, inputs)
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(n.endswith("bias") for n in names)
    if family == "t5":  # all biases were added (T5 has none); its RMS norms get nothing
        assert all(p.abs().sum() == 0 for n, p in model.named_parameters() if p.requires_grad)
        assert len(names) == 2 * 6 + 2 * 10  # enc: q,k,v,o,wi,wo; dec: 2x(q,k,v,o),wi,wo
    else:
        assert any("LayerNorm" in n or "layer_norm" in n for n in names)
