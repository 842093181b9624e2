"""PEFT baselines as designs: parallel adapter (pa), MAM adapter (mam), UniPELT (unipelt).

Exact counts on the tiny models (T5, BART, RoBERTa, BERT, Llama), hand-computed forward passes (scale,
parallel placement, gates), identity at initialisation, exact save/load, and the 0.5% budget on the paper
shapes.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from peftds.config.compose import compose
from peftds.design.apply import apply_plan, build, load_trained, save_trained
from peftds.design.plan import Design, Plan
from peftds.errors import PeftdsError
from peftds.model.backbones import Backbone, build_model
from peftds.model.strategies import NAMES, LayerShape, get_strategy
from peftds.model.strategies.adapter import AdapterWrapped, Bottleneck
from peftds.model.strategies.gating import Gate
from peftds.model.strategies.lora import LoRALinear
from peftds.model.strategies.prefix import GATE_ATTR, PREFIX_ATTR
from peftds.run_config import RunConfig

REPO = Path(__file__).resolve().parents[2]
TINY = ("tiny_t5", "tiny_bart", "tiny_roberta", "tiny_bert", "tiny_llama")
BASELINES = ("pa", "mam", "unipelt")
SEQ2SEQ = ("tiny_t5", "tiny_bart")
# The tiny models' own budgets (2%) cannot afford UniPELT's three strategies plus gates in T5's
# decoder layers (LoRA rank 1 + 4 gates > a third of the layer's share): give them 5%.
TINY_FRACTION = 0.05


def run_config(model: str, design: str, *extra: str) -> RunConfig:
    return RunConfig.from_composed(compose([f"model={model}", f"design={design}", *extra]))


def build_baseline(model: str, design: str, *extra: str, fraction: float = TINY_FRACTION):
    rc = run_config(model, design, *extra)
    built = build(rc.model, rc.design_config, fraction, num_labels=None if model in SEQ2SEQ else 3, seed=0)
    built.model.eval()
    return rc, built


def inputs(model: str, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 4:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    out = {"input_ids": ids, "attention_mask": mask}
    if model in SEQ2SEQ:
        out["decoder_input_ids"] = torch.randint(5, 1000, (3, 5), generator=g)
    return out


def logits(model: nn.Module, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def perturb(model: nn.Module, seed: int = 3) -> None:
    """Every trainable tensor to random values (LoRA B, adapter up, gates away from their init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def sub_plan(plan: Plan, keep: tuple[str, ...]) -> Plan:
    """The plan with only the strategies in `keep` (same sizes, same hyper-parameters)."""
    d = copy.deepcopy(plan.to_dict())
    for lp in d["layers"]:
        lp["modules"] = {n: s for n, s in lp["modules"].items() if n in keep}
        lp["params"] = {n: c for n, c in lp["params"].items() if n in keep}
    return Plan.from_dict(d)


def with_tensors_of(rc: RunConfig, plan: Plan, source: nn.Module, model: str) -> nn.Module:
    """A fresh backbone with `plan` applied and its trainable tensors copied from `source` by name."""
    fresh = build_model(rc.model, num_labels=None if model in SEQ2SEQ else 3)
    apply_plan(Backbone(fresh), plan)
    src = dict(source.named_parameters())
    with torch.no_grad():
        for name, p in fresh.named_parameters():
            if p.requires_grad:
                p.copy_(src[name])
    return fresh.eval()


# --------------------------------------------------------------------------- config
def test_base_hparams_lists_every_setting_with_its_default():
    listed = yaml.safe_load((REPO / "conf" / "design" / "base_hparams.yaml").read_text())["hparams"]
    assert set(listed) == set(NAMES)
    for name in NAMES:
        assert (listed[name] or {}) == get_strategy(name).defaults, name


def test_new_settings_default_to_the_old_behaviour():
    assert get_strategy("adapter").defaults["scale"] == 1.0
    assert not any(get_strategy(n).defaults.get("gated") for n in NAMES)


@pytest.mark.parametrize(
    "override,key",
    [
        ("design.hparams.adapter.scale=0", "design.hparams.adapter.scale"),
        ("design.hparams.adapter.gated=maybe", "design.hparams.adapter.gated"),
        ("design.hparams.prefix.gated=1", "design.hparams.prefix.gated"),
        ("design.hparams.lora.gated=yes", "design.hparams.lora.gated"),
    ],
)
def test_bad_new_settings_are_one_line_errors(override, key):
    with pytest.raises(PeftdsError, match=key):
        run_config("tiny_t5", "pa", override)


@pytest.mark.parametrize("design", BASELINES)
def test_baseline_designs_compose_with_their_hparams(design):
    hp = run_config("tiny_t5", design).design.strategy_hparams()
    if design in ("pa", "mam"):
        assert hp["adapter"]["variant"] == "parallel" and hp["adapter"]["scale"] == 4.0
        assert not hp["adapter"]["gated"]
    else:
        assert all(hp[n]["gated"] for n in ("adapter", "prefix", "lora"))
        assert hp["adapter"]["variant"] == "sequential" and hp["adapter"]["scale"] == 1.0


def test_gate_is_a_fixed_part_of_each_cost():
    """cost(size) stays increasing; the gate adds the same d + 1 per gated site at every size."""
    _, built = build_baseline("tiny_bart", "unipelt")
    dec = LayerShape.of(built.backbone.layers[-1])  # self + cross attention
    d = dec.d_model
    gates = {"adapter": d + 1, "prefix": 2 * (d + 1), "lora": 2 * 2 * (d + 1)}  # lora: q and v of 2 sites
    for name, extra in gates.items():
        s = get_strategy(name)
        plain, gated = s.hparams({}), s.hparams({"gated": True})
        for size in (1, 2, 7):
            assert s.cost(dec, size, gated) == s.cost(dec, size, plain) + extra
            assert s.cost(dec, size + 1, gated) > s.cost(dec, size, gated)
    a = get_strategy("adapter")
    assert a.cost(dec, 5, a.hparams({"scale": 4.0})) == a.cost(dec, 5, a.hparams({}))


# --------------------------------------------------------------------------- counts and identity
@pytest.mark.parametrize("model", TINY)
@pytest.mark.parametrize("design", BASELINES)
def test_formula_count_equals_built_count(model, design):
    _, built = build_baseline(model, design)
    plan, m = built.plan, built.model
    trainable = sum(p.numel() for n, p in m.named_parameters() if p.requires_grad and not built.backbone.is_head(n))
    assert trainable == plan.trainable_params == built.trainable_params
    assert plan.trainable_params <= plan.budget_params
    gates = [mod for mod in m.modules() if isinstance(mod, Gate)]
    if design == "unipelt":
        layers = built.backbone.layers
        sites = sum(len(layer.attentions) for layer in layers)
        # one adapter gate per layer, one prefix gate per attention, one LoRA gate per q/v matrix
        assert len(gates) == len(layers) + sites + 2 * sites
        assert all(p.requires_grad for g in gates for p in g.parameters())
    else:
        assert not gates
    wrapped = [mod for mod in m.modules() if isinstance(mod, AdapterWrapped)]
    assert len(wrapped) == len(built.backbone.layers)
    if design in ("pa", "mam"):
        assert all(w.variant == "parallel" and w.adapter.scale == 4.0 for w in wrapped)


@pytest.mark.parametrize("model", TINY)
@pytest.mark.parametrize("design", BASELINES)
def test_identity_at_init_where_the_method_has_it(model, design):
    """PA = frozen model; MAM = its prefix alone; UniPELT = its gated prefix alone (same tensors)."""
    rc, built = build_baseline(model, design)
    batch = inputs(model)
    got = logits(built.model, batch)
    if design == "pa":
        reference = build_model(rc.model, num_labels=None if model in SEQ2SEQ else 3).eval()
        same = dict(built.model.named_parameters())
        with torch.no_grad():
            for name, p in reference.named_parameters():
                if name in same:  # wrapped projections are renamed; their weights are seeded alike
                    p.copy_(same[name])
    else:
        reference = with_tensors_of(rc, sub_plan(built.plan, ("prefix",)), built.model, model)
        # the prefix does change the outputs (by design)
        frozen = build_model(rc.model, num_labels=None if model in SEQ2SEQ else 3).eval()
        if model in SEQ2SEQ:
            assert not torch.allclose(logits(frozen, batch), got)
    assert torch.equal(logits(reference, batch), got)


@pytest.mark.parametrize("model", TINY)
@pytest.mark.parametrize("design", BASELINES)
def test_save_load_round_trip_is_exact(tmp_path, model, design):
    _, built = build_baseline(model, design)
    perturb(built.model)
    batch = inputs(model)
    expected = logits(built.model, batch)
    save_trained(built, tmp_path)
    loaded = load_trained(tmp_path)
    loaded.model.eval()
    assert torch.equal(logits(loaded.model, batch), expected)
    assert loaded.plan.to_dict() == built.plan.to_dict()


@pytest.mark.parametrize("model", SEQ2SEQ)
def test_unipelt_generation_with_and_without_cache_agree(model):
    """The prefix gate reads the query input of each decoding step (incremental decoding included)."""
    _, built = build_baseline(model, "unipelt")
    perturb(built.model)
    batch = inputs(model)
    batch.pop("decoder_input_ids")
    kw = {"max_new_tokens": 4, "do_sample": False, "num_beams": 1, "min_new_tokens": 4}
    with torch.no_grad():
        a = built.model.generate(**batch, use_cache=True, **kw)
        b = built.model.generate(**batch, use_cache=False, **kw)
    assert torch.equal(a, b)


@pytest.mark.parametrize("model", TINY)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_prefix_gate_at_one_is_plain_prefix_tuning(model, attn):
    """g = 1 (gate weight 0, bias 30) gives the ungated prefix's outputs: masks, T5 bias, causal, cross."""
    impl = f"model.attn_implementation={attn}"
    rc, built = build_baseline(
        model, "unipelt", impl, "design.hparams.adapter.gated=false", "design.hparams.lora.gated=false"
    )
    perturb(built.model)
    with torch.no_grad():
        for mod in built.model.modules():
            gate = mod._modules.get(GATE_ATTR)
            if gate is not None:
                gate.proj.weight.zero_()
                gate.proj.bias.fill_(30.0)
    plain = copy.deepcopy(built.plan.to_dict())
    plain["hparams"]["prefix"]["gated"] = False
    plan = Plan.from_dict(plain)
    shapes = [LayerShape.of(layer) for layer in built.backbone.layers]
    for lp, shape in zip(plan.layers, shapes):
        lp.params["prefix"] = get_strategy("prefix").cost(shape, lp.modules["prefix"], plan.hparams["prefix"])
    reference = with_tensors_of(rc, plan, built.model, model)
    batch = inputs(model)
    # float64: tiny_bart's large init (std 0.5) amplifies float32 summation-order differences
    got, expected = logits(built.model.double(), batch), logits(reference.double(), batch)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- hand-computed forward passes
def test_gate_is_sigmoid_of_a_linear_map():
    gate = Gate(3)
    with torch.no_grad():
        gate.proj.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
        gate.proj.bias.fill_(0.25)
    x = torch.tensor([[1.0, 1.0, 2.0], [0.0, 0.5, -1.0]])
    # x W^T + b = [1 - 2 + 1 + 0.25, 0 - 1 - 0.5 + 0.25] = [0.25, -1.25]
    torch.testing.assert_close(gate(x), torch.sigmoid(torch.tensor([[0.25], [-1.25]])))
    gate.capture(None, (x,))
    torch.testing.assert_close(gate.take(), gate(x))
    with pytest.raises(RuntimeError, match="not captured"):
        gate.take()


def _bottleneck(scale: float, gated: bool) -> Bottleneck:
    b = Bottleneck(2, 2, "relu", scale=scale, gated=gated)
    with torch.no_grad():
        b.down.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, -1.0]]))
        b.down.bias.copy_(torch.tensor([0.0, 0.5]))
        b.up.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, -1.0]]))
        b.up.bias.copy_(torch.tensor([0.5, 0.0]))
        if gated:
            b.gate.proj.weight.copy_(torch.tensor([[1.0, 1.0]]))
            b.gate.proj.bias.fill_(-1.0)
    return b


def test_parallel_scaled_adapter_by_hand():
    """y = ffn_out(h) + s · up(relu(down(x))) with x the FFN input (captured), s = 4."""
    ffn_out = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        ffn_out.weight.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 2.0, 0.0]]))
    wrapped = AdapterWrapped(ffn_out, _bottleneck(4.0, gated=False), "parallel")
    x = torch.tensor([[2.0, 1.0]])  # FFN input (d_model = 2)
    h = torch.tensor([[1.0, 1.0, 1.0]])  # what the output projection reads (d_ff = 3)
    wrapped.capture(None, (x,))
    # ffn_out(h) = [2, 2]; down(x) = [2, 1.5]; relu = [2, 1.5]; up = [2 + 3 + 0.5, -1.5] = [5.5, -1.5]
    # y = [2, 2] + 4 · [5.5, -1.5] = [24, -4]
    torch.testing.assert_close(wrapped(h), torch.tensor([[24.0, -4.0]]))
    with pytest.raises(RuntimeError, match="not captured"):
        wrapped(h)


def test_gated_sequential_adapter_by_hand():
    """y = h + s · sigmoid(h W_g^T + b_g) · up(relu(down(h))), here with s = 1."""
    out = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        out.weight.copy_(torch.eye(2))
    wrapped = AdapterWrapped(out, _bottleneck(1.0, gated=True), "sequential")
    h = torch.tensor([[2.0, 1.0]])
    # adapter(h) = [5.5, -1.5] (as above); gate = sigmoid(2 + 1 - 1) = sigmoid(2)
    g = torch.sigmoid(torch.tensor(2.0))
    torch.testing.assert_close(wrapped(h), torch.tensor([[2.0 + g * 5.5, 1.0 - g * 1.5]]))


@pytest.mark.parametrize("alpha", [2.0, 16.0])
def test_gated_lora_by_hand(alpha):
    """UniPELT's published gated LoRA: y = base(x) + sigmoid(x W_g^T + b_g) · (x A^T B^T); the gate takes
    the place of alpha / r (the reference code sets the layer's scaling to the gate), so alpha has no effect."""
    base = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        base.weight.copy_(torch.eye(2))
    lora = LoRALinear(base, rank=1, alpha=alpha, gated=True)
    with torch.no_grad():
        lora.lora_A.copy_(torch.tensor([[1.0, 1.0]]))
        lora.lora_B.copy_(torch.tensor([[1.0], [-2.0]]))
        lora.lora_gate.proj.weight.copy_(torch.tensor([[0.5, 0.0]]))
        lora.lora_gate.proj.bias.fill_(0.0)
    x = torch.tensor([[2.0, 1.0]])
    # x A^T = 3; B -> [3, -6]; gate = sigmoid(1), whatever alpha / r
    g = torch.sigmoid(torch.tensor(1.0))
    torch.testing.assert_close(lora(x), torch.tensor([[2.0 + 3.0 * g, 1.0 - 6.0 * g]]))
    plain = LoRALinear(base, rank=1, alpha=alpha)  # ungated: alpha / r as before
    with torch.no_grad():
        plain.lora_A.copy_(lora.lora_A)
        plain.lora_B.copy_(lora.lora_B)
    torch.testing.assert_close(plain(x), torch.tensor([[2.0 + 3.0 * alpha, 1.0 - 6.0 * alpha]]))


@pytest.mark.parametrize("model", ["tiny_t5", "tiny_bart", "tiny_bert"])
def test_scaled_parallel_adapter_on_a_real_ffn(model):
    """On a real layer: wrapped output = ffn_out(its input) + 4 · up(relu(down(FFN input)))."""
    _, built = build_baseline(model, "pa")
    perturb(built.model)
    layer = built.backbone.layers[1]
    wrapped = layer.module_at(layer.ffn_out)
    seen = {}
    ffn_in = ("DenseReluDense.wi", "fc1", "intermediate.dense")  # the FFN input Linear per family
    first = [mod for name, mod in layer.block.named_modules() if name.endswith(ffn_in)]
    assert len(first) == 1
    first[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    wrapped.register_forward_hook(lambda m, a, o: seen.update(h=a[0], y=o))
    logits(built.model, inputs(model))
    ad = wrapped.adapter
    with torch.no_grad():
        expected = wrapped.base_layer(seen["h"]) + 4.0 * ad.up(torch.relu(ad.down(seen["x"])))
    torch.testing.assert_close(seen["y"], expected)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_gated_prefix_attention_by_hand(attn):
    """BERT self-attention: out_i = sum_seq a_ij v_j + g_i · sum_prefix a_ij P_V_j (joint softmax)."""
    _, built = build_baseline("tiny_bert", "unipelt", f"model.attn_implementation={attn}")
    perturb(built.model)
    layer = built.backbone.layers[0]
    site = layer.attentions[0]
    att = site.module
    seen = {}
    q_lin = site.linear("q")
    q_lin.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    out_mod = layer.module_at(layer.attn_out[0])
    out_mod.register_forward_pre_hook(lambda m, a: seen.__setitem__("ctx", a[0]))
    batch = inputs("tiny_bert")
    logits(built.model, batch)
    x = seen["x"]
    bsz, n, _ = x.shape
    h, dk = site.kv_heads, site.head_dim
    with torch.no_grad():

        def heads(t):
            return t.view(bsz, n, h, dk).transpose(1, 2)

        q, k, v = heads(site.linear("q")(x)), heads(site.linear("k")(x)), heads(site.linear("v")(x))
        pk, pv = att._modules[PREFIX_ATTR]()
        p = pk.shape[1]
        keys = torch.cat([pk.expand(bsz, -1, -1, -1), k], dim=2)
        scores = q @ keys.transpose(-1, -2) / dk**0.5
        key_ok = torch.cat([torch.ones(bsz, p, dtype=torch.bool), batch["attention_mask"].bool()], dim=1)
        scores = scores.masked_fill(~key_ok[:, None, None, :], float("-inf"))
        a = scores.softmax(-1)
        gate = att._modules[GATE_ATTR]
        g = torch.sigmoid(x @ gate.proj.weight.T + gate.proj.bias)  # [B, n, 1]
        seq = a[..., p:] @ v
        pre = a[..., :p] @ pv.expand(bsz, -1, -1, -1)
        ctx = (seq + g[:, None] * pre).transpose(1, 2).reshape(bsz, n, h * dk)
    assert not torch.allclose(g, torch.ones_like(g)) and not torch.allclose(g, torch.zeros_like(g))
    torch.testing.assert_close(seen["ctx"], ctx, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- paper shapes
@pytest.mark.parametrize("model", ["t5_base", "roberta_base", "bart_base"])
@pytest.mark.parametrize("design", BASELINES)
def test_budget_on_paper_shapes(model, design):
    """0.5% of the backbone: trainable <= budget and >= 95% of it; formula == built count (meta device)."""
    rc = run_config(model, design)
    built = build(rc.model, rc.design_config, 0.005, num_labels=2, device="meta")
    plan = built.plan
    assert built.trainable_params == plan.trainable_params
    assert 0.95 * plan.budget_params <= plan.trainable_params <= plan.budget_params
    assert Design.from_config(rc.design_config).strategies == (
        {"pa": ("adapter",), "mam": ("adapter", "prefix"), "unipelt": ("adapter", "prefix", "lora")}[design],
    )
