"""One real training step: backbone weights stay put, every strategy parameter learns."""

from __future__ import annotations

import pytest
import torch

from tests.model.helpers import FAMILIES, SEQ2SEQ, apply_plan, batch, frozen, uniform_plan

# Adapters use smooth activations here: with a ReLU bottleneck of 3 units on a tiny random model some
# adapters legitimately start with all units dead for the whole batch (no gradient anywhere).
SETUPS = {
    "adapter": {"adapter": (3, {"placement": "both", "activation": "gelu"})},
    "adapter-parallel": {"adapter": (3, {"placement": "both", "variant": "parallel", "activation": "silu"})},
    "lora": {"lora": (2, {"targets": ["q", "k", "v", "o"], "dropout": 0.1})},
    "prefix": {"prefix": (2, {})},
    "prefix-reparam": {"prefix": (2, {"reparam": True, "reparam_hidden": 8})},
    "bitfit": {"bitfit": (0, {})},
    "all-parallel": {
        "bitfit": (0, {}),
        "lora": (2, {"targets": ["q", "k", "v", "o"]}),
        "adapter": (2, {"placement": "both", "variant": "parallel", "activation": "tanh"}),
        "prefix": (2, {"reparam": True, "reparam_hidden": 8}),
    },
    "all": {"bitfit": (0, {}), "lora": (2, {}), "adapter": (2, {"activation": "tanh"}), "prefix": (2, {})},
}


def _loss(model, family, inputs):
    if family in SEQ2SEQ:
        labels = inputs["decoder_input_ids"]
        args = {k: v for k, v in inputs.items() if k != "decoder_input_ids"}
        return model(**args, labels=labels).loss
    return model(**inputs, labels=torch.tensor([0, 1, 2])).loss


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("setup", list(SETUPS))
def test_training_step(family, setup):
    model, bb = frozen(family)
    apply_plan(bb, uniform_plan(bb, SETUPS[setup]))
    model.train()
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    start = {n: p.detach().clone() for n, p in params.items()}
    opt = torch.optim.Adam(params.values(), lr=1e-2)
    inputs = batch(family)
    # B of LoRA and up of adapters start at zero, so A / down get gradient from the second step on
    for _ in range(2):
        opt.zero_grad()
        loss = _loss(model, family, inputs)
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    no_grad = [n for n, p in params.items() if p.grad is None or p.grad.abs().max() == 0]
    assert not no_grad, f"no gradient at step 2: {no_grad}"
    unchanged = [n for n, p in params.items() if torch.equal(p, start[n])]
    assert not unchanged
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen_before[n]), n
            assert p.grad is None


@pytest.mark.parametrize("family", ["t5", "bert"])
def test_all_four_identity_except_prefix_and_deepcopy(family):
    """bitfit+lora+adapter keep outputs at init; a deep copy (hooks, slices) is independent."""
    import copy

    model, bb = frozen(family)
    inputs = batch(family)
    with torch.no_grad():
        before = model(**inputs).logits
        apply_plan(
            bb,
            uniform_plan(
                bb,
                {
                    "bitfit": (0, {}),
                    "lora": (2, {"targets": ["q", "k", "v", "o"]}),
                    "adapter": (2, {"placement": "both", "variant": "parallel"}),
                },
            ),
        )
        torch.testing.assert_close(model(**inputs).logits, before, atol=0, rtol=0)
        apply_plan(bb, uniform_plan(bb, {"prefix": (2, {"reparam": True, "reparam_hidden": 8})}))
        out = model(**inputs).logits
        twin = copy.deepcopy(model)
        torch.testing.assert_close(twin(**inputs).logits, out, atol=0, rtol=0)
        for n, p in twin.named_parameters():
            if p.requires_grad and ("up" in n or "encoder.mlp" in n or "lora_B" in n):
                p.add_(0.1)
        assert (twin(**inputs).logits - out).abs().max() > 1e-4
        torch.testing.assert_close(model(**inputs).logits, out, atol=0, rtol=0)


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_bf16_autocast_step(family):
    model, bb = frozen(family)
    apply_plan(bb, uniform_plan(bb, SETUPS["all-parallel"]))
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = _loss(model, family, batch(family))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
