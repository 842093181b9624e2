"""LoRA: equivalence with HF peft (oracle), identity at init, wrapper details."""

from __future__ import annotations

import pytest
import torch

from peftds.model.strategies.lora import LoRALinear
from tests.model.helpers import apply_plan, batch, build_model, frozen, outputs, uniform_plan

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

PEFT_TARGETS = {"t5": ["q", "v"], "bart": ["q_proj", "v_proj"], "roberta": ["query", "value"]}


@pytest.mark.parametrize("family", ["t5", "bart", "roberta"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_lora_matches_peft(family, attn):
    peft = pytest.importorskip("peft")
    rank, alpha = 3, 16
    ref = build_model(family, attn)
    ref = peft.get_peft_model(
        ref, peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=PEFT_TARGETS[family])
    ).eval()
    g = torch.Generator().manual_seed(7)
    lora_weights = {}
    for name, mod in ref.named_modules():
        if hasattr(mod, "lora_B") and "default" in getattr(mod, "lora_B", {}):
            with torch.no_grad():
                mod.lora_B["default"].weight.copy_(torch.randn(mod.lora_B["default"].weight.shape, generator=g) * 0.1)
            lora_weights[name] = (mod.lora_A["default"].weight.detach(), mod.lora_B["default"].weight.detach())
    assert lora_weights

    model, bb = frozen(family, attn)
    apply_plan(bb, uniform_plan(bb, {"lora": (rank, {"targets": ["q", "v"], "alpha": alpha})}))
    ours = {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    assert len(ours) == len(lora_weights)
    for name, mod in ours.items():
        a, b = lora_weights["base_model.model." + name]
        with torch.no_grad():
            mod.lora_A.copy_(a)
            mod.lora_B.copy_(b)
    inputs = batch(family)
    with torch.no_grad():
        expected = outputs(ref, inputs)
        got = outputs(model, inputs)
        plain = outputs(build_model(family, attn), inputs)
    assert (expected - plain).abs().max() > 1e-3  # the LoRA update is not trivial
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["t5", "bart", "bert", "roberta"])
def test_lora_identity_at_init(family):
    model, bb = frozen(family)
    inputs = batch(family)
    with torch.no_grad():
        before = outputs(model, inputs)
        apply_plan(bb, uniform_plan(bb, {"lora": (4, {"targets": ["q", "k", "v", "o"], "dropout": 0.1})}))
        after = outputs(model, inputs)
    torch.testing.assert_close(after, before, atol=0, rtol=0)


def test_lora_wrapper_layout():
    model, bb = frozen("t5")
    apply_plan(bb, {0: {"lora": (2, {"alpha": 8})}})
    q = bb.layers[0].attentions[0].linear("q")
    assert isinstance(q, LoRALinear) and isinstance(q.base_layer, torch.nn.Linear)
    assert q.scaling == 4.0 and q.in_features == 32 and q.out_features == 64 and q.weight is q.base_layer.weight
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {f"encoder.block.0.layer.0.SelfAttention.{t}.lora_{x}" for t in "qv" for x in "AB"}
    assert "encoder.block.0.layer.0.SelfAttention.q.base_layer.weight" in model.state_dict()
    # wrapper forward = base + scaled low-rank update
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        q.lora_B.normal_()
        torch.testing.assert_close(q(x), q.base_layer(x) + x @ q.lora_A.T @ q.lora_B.T * 4.0)
