"""Prefix tuning: attention checked against a direct computation, padding, caching, pass-through."""

from __future__ import annotations

import pytest
import torch

from peftds.model.strategies.prefix import PREFIX_ATTR, WRAPPED, causal_with_prefix, extended_mask
from tests.model.helpers import FAMILIES, SEQ2SEQ, apply_plan, batch, frozen, outputs, uniform_plan

P = 3


def _prefixed(family, attn, reparam=False, size=P):
    model, bb = frozen(family, attn)
    apply_plan(bb, uniform_plan(bb, {"prefix": (size, {"reparam": reparam, "reparam_hidden": 8, "init_std": 0.5})}))
    return model, bb


def _capture(bb):
    """Hooks recording q/k/v projection outputs and the attention output (input of o) of every site."""
    records, handles = [], []
    for layer in bb.layers:
        for site in layer.attentions:
            rec = {"layer": layer, "site": site}
            records.append(rec)
            for n in ("q", "k", "v"):
                handles.append(
                    site.linear(n).register_forward_hook(
                        lambda m, a, out, rec=rec, n=n: rec.__setitem__(n, out.detach())
                    )
                )
            handles.append(
                site.linear("o").register_forward_pre_hook(lambda m, a, rec=rec: rec.__setitem__("out", a[0].detach()))
            )
    return records, handles


def _t5_bias(model, layer, q_len, k_len):
    stack = model.encoder if layer.stack == "encoder" else model.decoder
    return stack.block[0].layer[0].SelfAttention.compute_bias(q_len, k_len)


def _by_hand(model, family, rec, key_mask):
    """softmax(q·[Pk;K]^T·scale + [0;bias] + [0;mask]) [Pv;V] for one site."""
    site, layer = rec["site"], rec["layer"]
    h, d = site.kv_heads, site.head_dim
    q, k, v = rec["q"], rec["k"], rec["v"]
    bsz, sq, sk = q.shape[0], q.shape[1], k.shape[1]
    q = q.view(bsz, sq, h, d).transpose(1, 2)
    k = k.view(bsz, sk, h, d).transpose(1, 2)
    v = v.view(bsz, sk, h, d).transpose(1, 2)
    pk, pv = getattr(site.module, PREFIX_ATTR)()
    p = pk.shape[1]
    kk = torch.cat([pk.expand(bsz, -1, -1, -1), k], 2)
    vv = torch.cat([pv.expand(bsz, -1, -1, -1), v], 2)
    scale = 1.0 if family == "t5" else d**-0.5
    scores = q @ kk.transpose(2, 3) * scale
    if family == "t5" and site.kind == "self":
        bias = _t5_bias(model, layer, sq, sk)
        scores = scores + torch.cat([torch.zeros(1, h, sq, p), bias], -1)
    allowed = key_mask[:, None, None, :].bool().expand(bsz, 1, sq, sk)
    if layer.stack == "decoder" and site.kind == "self":
        allowed = allowed & torch.ones(sq, sk, dtype=torch.bool).tril()
    allowed = torch.cat([torch.ones(bsz, 1, sq, p, dtype=torch.bool), allowed], -1)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return (scores.softmax(-1) @ vv).transpose(1, 2).reshape(bsz, sq, h * d)


CASES = [(f, a, pad, False) for f in FAMILIES for a in ("sdpa", "eager") for pad in (True, False)]
CASES += [("t5", "sdpa", True, True), ("bart", "eager", True, True), ("bert", "sdpa", False, True)]


@pytest.mark.parametrize("family,attn,pad,reparam", CASES)
def test_prefix_attention_matches_direct_computation(family, attn, pad, reparam):
    model, bb = _prefixed(family, attn, reparam)
    inputs = batch(family, pad=pad)
    if family in SEQ2SEQ and pad:
        dec_mask = torch.ones_like(inputs["decoder_input_ids"])
        dec_mask[1, -2:] = 0
        inputs["decoder_attention_mask"] = dec_mask
    if not pad:
        inputs.pop("attention_mask")
    records, handles = _capture(bb)
    with torch.no_grad():
        model(**inputs)
        enc_mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
        dec_mask = inputs.get("decoder_attention_mask")
        kinds = set()
        for rec in records:
            layer, site = rec["layer"], rec["site"]
            if layer.stack == "decoder" and site.kind == "self":
                key_mask = dec_mask if dec_mask is not None else torch.ones_like(inputs["decoder_input_ids"])
            else:
                key_mask = enc_mask
            expected = _by_hand(model, family, rec, key_mask)
            torch.testing.assert_close(rec["out"], expected, atol=2e-5, rtol=1e-4)
            kinds.add((layer.stack, site.kind))
    for hnd in handles:
        hnd.remove()
    want = (
        {("encoder", "self"), ("decoder", "self"), ("decoder", "cross")} if family in SEQ2SEQ else {("encoder", "self")}
    )
    assert kinds == want


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padded_batch_equals_single_examples(family, attn):
    model, _ = _prefixed(family, attn)
    inputs = batch(family, pad=True)
    with torch.no_grad():
        full = outputs(model, inputs)
        for i in range(inputs["input_ids"].shape[0]):
            n = int(inputs["attention_mask"][i].sum())
            single = {"input_ids": inputs["input_ids"][i : i + 1, :n]}
            if family in SEQ2SEQ:
                single["decoder_input_ids"] = inputs["decoder_input_ids"][i : i + 1]
            torch.testing.assert_close(outputs(model, single)[0], full[i], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", SEQ2SEQ)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_generation_with_and_without_cache_agree(family, attn):
    model, _ = _prefixed(family, attn)
    inputs = batch(family, pad=True)
    kw = dict(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        max_new_tokens=6,
        min_new_tokens=6,
        do_sample=False,
        num_beams=1,
        output_scores=True,
        return_dict_in_generate=True,
    )
    with torch.no_grad():
        cached = model.generate(use_cache=True, **kw)
        uncached = model.generate(use_cache=False, **kw)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(torch.stack(cached.scores), torch.stack(uncached.scores), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_switch_without_prefix_is_transparent_and_prefix_changes_outputs(family, attn):
    model, bb = frozen(family, attn)
    inputs = batch(family)
    with torch.no_grad():
        before = outputs(model, inputs)
        from peftds.model.strategies import get_strategy

        strat = get_strategy("prefix")
        strat.prepare(bb, strat.hparams({}))
        assert model.config._attn_implementation == WRAPPED[attn]
        assert all(m.config._attn_implementation == WRAPPED[attn] for m in model.modules() if hasattr(m, "config"))
        torch.testing.assert_close(outputs(model, inputs), before, atol=0, rtol=0)
        strat.apply(bb, bb.layers[-1], 2, strat.hparams({"init_std": 0.5}))
        assert (outputs(model, inputs) - before).abs().max() > 1e-4


def test_mask_extension_and_cache():
    m = torch.tensor([[True, False], [True, True]])[:, None, None, :].expand(2, 1, 3, 2)
    e = extended_mask(m, 2)
    assert e.shape == (2, 1, 3, 4) and e[..., :2].all() and torch.equal(e[..., 2:], m)
    assert extended_mask(m, 2) is e  # extended once per source tensor
    f = torch.zeros(1, 1, 3, 2).masked_fill(torch.tensor([False, True]), -1e9)
    ef = extended_mask(f, 1)
    assert ef.shape == (1, 1, 3, 3) and (ef[..., 0] == 0).all() and torch.equal(ef[..., 1:], f)
    c = causal_with_prefix(3, 3, 2, torch.device("cpu"))
    assert c.shape == (1, 1, 3, 5)
    assert c[0, 0].tolist() == [[True, True, True, False, False], [True, True, True, True, False], [True] * 5]


def test_bert_eager_and_sdpa_agree_with_prefix():
    """The two wrapped implementations give the same model (mask formats differ: bool vs additive)."""
    m1, _ = _prefixed("bert", "sdpa")
    m2, _ = _prefixed("bert", "eager")
    inputs = batch("bert")
    with torch.no_grad():
        torch.testing.assert_close(outputs(m1, inputs), outputs(m2, inputs), atol=2e-5, rtol=1e-4)
