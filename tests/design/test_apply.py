"""Freezing, and save / load of trained designs (exact round trip)."""

import pytest
import torch

from peftds.config.compose import compose
from peftds.design.apply import build, load_trained, save_trained
from tests.helpers import built_from


@pytest.mark.parametrize("model,design,labels", [("tiny_t5", "spindle_t5base", None), ("tiny_bert", "spindle", 3)])
def test_save_load_round_trip_is_exact(tmp_path, model, design, labels):
    cfg = compose([f"model={model}", f"design={design}"])
    built = build(*built_from(cfg), num_labels=labels, seed=1)
    model_ = built.model
    opt = torch.optim.Adam([p for p in model_.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(5, 1000, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    kw = {"decoder_input_ids": torch.randint(5, 1000, (2, 4))} if labels is None else {}
    model_.train()
    for _ in range(2):  # change every trainable tensor away from its initial value
        out = model_(input_ids=ids, attention_mask=mask, **kw).logits
        out.float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    model_.eval()
    with torch.no_grad():
        expected = model_(input_ids=ids, attention_mask=mask, **kw).logits
    save_trained(built, tmp_path)
    loaded = load_trained(tmp_path)
    loaded.model.eval()
    with torch.no_grad():
        got = loaded.model(input_ids=ids, attention_mask=mask, **kw).logits
    assert torch.equal(expected, got)
    assert loaded.plan.to_dict() == built.plan.to_dict()


def test_only_strategy_params_and_head_train():
    cfg = compose(["model=tiny_roberta", "design=spindle"])
    built = build(*built_from(cfg), num_labels=2)
    for name, p in built.model.named_parameters():
        original = not any(k in name for k in ("lora", "adapter", "prefix")) and not name.endswith("bias")
        if original and not built.backbone.is_head(name):
            assert not p.requires_grad, name
    assert built.head_params > 0


def test_full_fine_tuning_trains_everything():
    cfg = compose(["model=tiny_bert", "design=full"])
    built = build(*built_from(cfg), num_labels=2)
    assert built.trainable_params == built.plan.backbone_params
    assert all(p.requires_grad for p in built.model.parameters())
