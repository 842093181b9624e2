"""Decoder-only LLM families, checked by one table (``CASES``) that drives the same checks on each.

Per family, on a tiny random-initialised model with the family's real structure (GQA, head_dim from
the config, sliding windows, Gemma 2's soft-cap, Qwen3's q/k norms, Phi-3's and GPT-2's fused
projections): exact cost == built count, identity at initialisation, BitFit's exact count, LoRA ==
peft's LoRA, prefix == a hand-written eager attention, padded == unpadded, cached generation ==
uncached, save/load, budget plan == built model, and a short training run lowers the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from peftds.design.apply import build, load_trained, save_trained
from peftds.model.backbones import Backbone
from peftds.model.strategies.lora import LoRALinear
from peftds.model.strategies.prefix import PREFIX_ATTR, WRAPPED
from tests.model.helpers import (
    DECODERS,
    apply_plan,
    batch,
    decoder_lm,
    decoder_model_config,
    frozen,
    outputs,
    trainable,
    uniform_plan,
)


@dataclass(frozen=True)
class Case:
    family: str
    ffn_targets: tuple[str, ...]  # the FFN LoRA targets the family has
    bitfit_per_layer: int  # exact BitFit count of one tiny layer (sum of linear output widths + norm biases)
    windowed: bool  # some layer's attention gets a sliding window
    softcap: bool  # attention logits are soft-capped


# Tiny shapes: hidden 32, 4 query / 2 key-value heads x 16, FFN 64 (Phi-3: head_dim 32 / 4 = 8; GPT-2: no
# GQA, head_dim 8, FFN 128). Llama-style BitFit per layer: q 64 + k 32 + v 32 + o 32 + gate 64 + up 64 +
# down 32 = 320 (RMSNorms have no bias, so nothing from norms).
CASES = [
    Case("llama", ("gate", "up", "down"), 320, False, False),
    Case("mistral", ("gate", "up", "down"), 320, True, False),
    Case("qwen2", ("gate", "up", "down"), 320, False, False),
    Case("qwen3", ("gate", "up", "down"), 320, False, False),
    Case("gemma2", ("gate", "up", "down"), 320, True, True),
    Case("gemma3", ("gate", "up", "down"), 320, True, False),
    # fused qkv_proj 32+16+16 + o 32 + fused gate_up 128 + down 32
    Case("phi3", ("gate", "up", "down"), 256, False, False),
    # fused c_attn 96 + attn c_proj 32 + c_fc 128 + mlp c_proj 32 + ln_1 32 + ln_2 32
    Case("gpt2", ("up", "down"), 352, False, False),
]
assert tuple(c.family for c in CASES) == DECODERS
IDS = [c.family for c in CASES]


def _all_targets(case: Case) -> list[str]:
    return ["q", "k", "v", "o", *case.ffn_targets]


def _mixed(case: Case) -> dict:
    """Every strategy on every layer: prefix, LoRA on all targets, adapters after attention and MLP, BitFit."""
    return {
        "prefix": (3, {"init_std": 0.5}),
        "lora": (2, {"targets": _all_targets(case)}),
        "adapter": (3, {"placement": "both"}),
        "bitfit": (0, {}),
    }


def _perturb(model: torch.nn.Module, seed: int = 3, scale: float = 0.2) -> None:
    """Move every trainable tensor off its initial value (zero-initialised LoRA B / adapter up included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


STRATEGY_ROWS = [
    ("lora", 2, "all"),
    ("adapter", 3, {"placement": "both"}),
    ("adapter", 3, {"placement": "both", "variant": "parallel"}),
    ("bitfit", 0, {}),
    ("prefix", 3, {}),
]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_costs_identity_and_bitfit_count(case):
    ref_model, _ = frozen(case.family)
    inputs = batch(case.family)
    with torch.no_grad():
        ref = outputs(ref_model, inputs)
    for name, size, hp in STRATEGY_ROWS:
        hp = {"targets": _all_targets(case)} if hp == "all" else hp
        model, bb = frozen(case.family)
        forecast = apply_plan(bb, uniform_plan(bb, {name: (size, hp)}))
        assert forecast == trainable(model), (name, hp)
        if name == "bitfit":
            assert forecast == case.bitfit_per_layer * len(bb)
        with torch.no_grad():
            out = outputs(model, inputs)
        if name == "prefix":
            assert not torch.allclose(out, ref)  # a prefix changes attention from the start (SPEC §4)
        else:
            torch.testing.assert_close(out, ref, atol=0, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_lora_equals_peft(case):
    """Our LoRA (per-layer ranks, all targets, fused projections sliced) == peft's LoRA with the same weights.

    A fused module with LoRA on several of its slices is one peft LoRA whose rank is the sum of the
    parts' ranks, A the parts' A stacked and B block-structured (each part's B on its own output rows).
    """
    from peft import LoraConfig, get_peft_model

    model, bb = frozen(case.family)
    alpha = 8
    plan = {i: {"lora": (2 + i, {"targets": _all_targets(case), "alpha": alpha})} for i in range(len(bb))}
    apply_plan(bb, plan)
    _perturb(model)
    parts: dict[str, list[LoRALinear]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, LoRALinear):
            outer = name.split(".base_layer")[0]
            parts.setdefault(outer, []).append(mod)
    fused = {n for n, ps in parts.items() if len(ps) > 1}
    assert (len(fused) > 0) == (case.family in ("phi3", "gpt2"))

    ref, _ = frozen(case.family)
    rank = {n: sum(p.rank for p in ps) for n, ps in parts.items()}
    cfg = LoraConfig(
        r=1,
        lora_alpha=alpha,
        target_modules=sorted(parts),
        rank_pattern={f"^{n}$": r for n, r in rank.items()},
        alpha_pattern={f"^{n}$": alpha * len(ps) for n, ps in parts.items()},
        fan_in_fan_out=case.family == "gpt2",
        init_lora_weights=False,
    )
    peft_model = get_peft_model(ref, cfg)
    with torch.no_grad():
        for name, ps in parts.items():
            target = peft_model.base_model.model.get_submodule(name)
            a, b = target.lora_A["default"].weight, target.lora_B["default"].weight
            assert a.shape[0] == rank[name]
            b.zero_()
            col = 0
            for part in ps:
                start, stop = part.window or (0, b.shape[0])
                a[col : col + part.rank] = part.lora_A
                b[start:stop, col : col + part.rank] = part.lora_B
                col += part.rank
    inputs = batch(case.family)
    with torch.no_grad():
        ours, theirs = outputs(model, inputs), peft_model(**inputs).logits
    assert (ours - outputs(frozen(case.family)[0], inputs)).abs().max() > 1e-3  # the update is not trivial
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def _recording(records: list, base: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    wrapped = ALL_ATTENTION_FUNCTIONS[WRAPPED[base]]

    def record(module, query, key, value, attention_mask, *args, **kwargs):
        out, weights = wrapped(module, query, key, value, attention_mask, *args, **kwargs)
        records.append({"module": module, "q": query, "k": key, "v": value, "out": out, "kwargs": kwargs})
        return out, weights

    return record


def _eager_by_hand(rec: dict, key_mask: torch.Tensor) -> torch.Tensor:
    """softmax(softcap([q]·[Pk;K]^T·scaling) masked) [Pv;V] with key/value heads expanded (GQA);
    real keys: causal, padding and the sliding window; prefix keys: always visible."""
    q, k, v, kw = rec["q"], rec["k"], rec["v"], rec["kwargs"]
    pk, pv = getattr(rec["module"], PREFIX_ATTR)()
    bsz, heads, sq, _ = q.shape
    groups = heads // k.shape[1]
    p = pk.shape[1]
    kk = torch.cat([pk.expand(bsz, -1, -1, -1), k], 2).repeat_interleave(groups, dim=1)
    vv = torch.cat([pv.expand(bsz, -1, -1, -1), v], 2).repeat_interleave(groups, dim=1)
    scores = q @ kk.transpose(2, 3) * kw["scaling"]
    if kw.get("softcap") is not None:
        scores = torch.tanh(scores / kw["softcap"]) * kw["softcap"]
    i = torch.arange(sq)[:, None]
    j = torch.arange(k.shape[2])[None, :]
    allowed = (j <= i) & key_mask[:, None, None, :].bool()
    window = kw.get("sliding_window")
    if window is not None:
        allowed = allowed & (i - j < window)
    allowed = torch.cat([torch.ones(bsz, 1, sq, p, dtype=torch.bool), allowed.expand(bsz, 1, sq, -1)], -1)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return (scores.softmax(-1) @ vv).transpose(1, 2)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_prefix_equals_hand_written_attention(case, attn, monkeypatch):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if case.softcap and attn == "sdpa":
        pytest.skip("sdpa has no soft-cap (transformers refuses it): Gemma 2 runs eager")
    model, bb = frozen(case.family, attn)
    apply_plan(bb, uniform_plan(bb, {"prefix": (3, {"init_std": 0.5})}))
    used = model.config._attn_implementation
    records: list = []
    base = "sdpa" if used == WRAPPED["sdpa"] else "eager"
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._local_mapping, used, _recording(records, base))
    for pad in (True, False):
        inputs = batch(case.family, pad=pad, src_len=9)
        records.clear()
        with torch.no_grad():
            model(**inputs)
        assert len(records) == len(bb)
        for rec in records:
            expected = _eager_by_hand(rec, inputs["attention_mask"])
            torch.testing.assert_close(rec["out"], expected, atol=1e-5, rtol=0)
    windows = {rec["kwargs"].get("sliding_window") for rec in records}
    assert (windows != {None}) == case.windowed
    assert (records[0]["kwargs"].get("softcap") is not None) == case.softcap


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_padded_batch_equals_single_examples(case):
    model, bb = frozen(case.family)
    apply_plan(bb, uniform_plan(bb, _mixed(case)))
    _perturb(model)
    inputs = batch(case.family, pad=True)
    with torch.no_grad():
        full = outputs(model, inputs)
        for i in range(inputs["input_ids"].shape[0]):
            n = int(inputs["attention_mask"][i].sum())
            single = outputs(model, {"input_ids": inputs["input_ids"][i : i + 1, :n]})
            torch.testing.assert_close(single[0], full[i], atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cached_generation_equals_uncached(case):
    """Every strategy on a causal LM: step-by-step decoding with the KV cache gives the logits of the full
    forward, and greedy generation of a left-padded batch is the same with and without the cache."""
    lm = decoder_lm(case.family)
    for p in lm.parameters():
        p.requires_grad_(False)
    apply_plan(Backbone(lm), uniform_plan(Backbone(lm), _mixed(case)))
    _perturb(lm)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 128, (2, 9), generator=g)
    with torch.no_grad():
        full = lm(input_ids=ids).logits
        out = lm(input_ids=ids[:, :4], use_cache=True)
        steps = [out.logits]
        for t in range(4, ids.shape[1]):
            out = lm(input_ids=ids[:, t : t + 1], cache=out.past_key_values, use_cache=True)
            steps.append(out.logits)
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)
        mask = torch.ones_like(ids)
        mask[1, :3] = 0
        ids = ids.masked_fill(mask == 0, 0)
        kw = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None)
        cached = lm.generate(ids, use_cache=True, output_scores=True, return_dict_in_generate=True, **kw)
        plain = lm.generate(ids, use_cache=False, output_scores=True, return_dict_in_generate=True, **kw)
    assert torch.equal(cached.sequences, plain.sequences)
    torch.testing.assert_close(torch.stack(cached.scores), torch.stack(plain.scores), atol=1e-5, rtol=0)


MIXED_DESIGN = {
    "name": "mixed",
    "grouping": {"sizes": [1, 1]},
    "tuned": "all",
    "allocation": "uniform",
    "strategies": [["adapter", "lora"], ["prefix", "bitfit", "lora"]],
}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_budget_save_load_and_training(case, tmp_path):
    """The budget plan equals the built count; save/load reproduces outputs; 10 steps lower the loss."""
    torch.manual_seed(0)  # the initialisation, whatever ran before
    design = {**MIXED_DESIGN, "hparams": {"lora": {"targets": _all_targets(case)}}}
    built = build(decoder_model_config(case.family), design, 0.2, num_labels=3)
    plan = built.plan
    assert built.trainable_params == plan.trainable_params
    assert 0.95 * plan.budget_params <= plan.trainable_params <= plan.budget_params
    model = built.model.eval()
    inputs = batch(case.family)
    labels = torch.tensor([0, 1, 2])
    with torch.no_grad():
        before = model(**inputs, labels=labels).loss.item()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(10):
        opt.zero_grad()
        model(**inputs, labels=labels).loss.backward()
        opt.step()
    with torch.no_grad():
        after = model(**inputs, labels=labels).loss.item()
        trained = outputs(model, inputs)
    assert after < 0.5 * before
    save_trained(built, tmp_path)
    loaded = load_trained(tmp_path).model.eval()
    with torch.no_grad():
        torch.testing.assert_close(outputs(loaded, inputs), trained, atol=0, rtol=0)


def test_config_model_types_are_the_backbones_families():
    from peftds.config.sections import MODEL_TYPES
    from peftds.model.backbones import FAMILIES

    assert sorted(MODEL_TYPES) == sorted(t for f in FAMILIES.values() for t in f.model_types)


# model config -> (stack length, backbone params, BitFit params per layer): the published shapes on the
# meta device (offline). BitFit per layer = the output widths of the block's linears (+ norm biases):
# Llama-3.1-8B q 4096 + k 1024 + v 1024 + o 4096 + gate 14336 + up 14336 + down 4096 = 43,008;
# Qwen2.5-7B trains its q/k/v biases and adds the rest; GPT-2 has them all, LayerNorm biases included.
PAPER_SHAPES = {
    "llama3_8b": (32, 7_504_924_672, 43_008),
    "qwen2_5_7b": (28, 7_070_619_136, 49_664),
    "qwen3_8b": (36, 7_568_405_504, 38_912),
    "mistral_7b": (32, 7_110_660_096, 43_008),
    "gemma2_9b": (42, 9_241_705_984, 44_032),
    "phi3_mini": (32, 3_722_578_944, 31_744),
    "gpt2": (12, 124_439_808, 8_448),
    "smollm2_135m": (30, 134_515_008, 5_184),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PAPER_SHAPES))
def test_paper_shapes_on_the_meta_device(name, compose_cfg):
    from peftds.design.apply import layer_shapes
    from peftds.model.backbones import build_model
    from peftds.model.strategies import get_strategy

    layers, params, bitfit = PAPER_SHAPES[name]
    bb = Backbone(build_model(compose_cfg(f"model={name}").model, num_labels=2, device="meta"))
    assert len(bb) == layers and bb.backbone_params() == params
    assert {get_strategy("bitfit").cost(s, 0, {}) for s in layer_shapes(bb)} == {bitfit}


@pytest.mark.parametrize("family", ["phi3", "gpt2"])
def test_fused_projection_targets_keep_their_own_ranks(family):
    """q, k and v of a fused projection with ranks 1, 2, 3: each update lands on its own output columns only."""
    from peftds.model.strategies.base import innermost_linear

    model, bb = frozen(family)
    site = bb.layers[0].attentions[0]
    parent, attr = site.projections["q"]
    mod = getattr(parent, attr)
    for target, rank in (("q", 1), ("k", 2), ("v", 3)):
        mod = LoRALinear(mod, rank, 8, window=site.slices[target])
    setattr(parent, attr, mod)
    _perturb(model)
    base = innermost_linear(mod)
    x = torch.randn(4, 32)
    expected = base(x).detach().clone()
    part = mod
    while isinstance(part, LoRALinear):
        start, stop = part.window
        expected[:, start:stop] += x @ part.lora_A.T @ part.lora_B.T * part.scaling
        part = part.base_layer
    with torch.no_grad():
        torch.testing.assert_close(mod(x), expected, atol=1e-6, rtol=0)
    assert [p.rank for p in mod.modules() if isinstance(p, LoRALinear)] == [3, 2, 1]
