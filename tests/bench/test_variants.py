"""peftds.bench.variants: the peft LoRA rank at a budget, the floor's norm, the shared random batch."""

import torch

from peftds.bench.variants import fill_special_ids, first_norm, peft_lora_plan, random_batch
from peftds.config.compose import compose
from peftds.design.budget import budget_params
from peftds.model.backbones import Backbone, build_model


def test_peft_rank_on_t5_base_shape_matches_paper():
    """0.5% of T5-base affords peft LoRA q,v rank 10 (0.49% of the backbone), as in the reference figures."""
    cfg = compose(["model=t5_base", "model.pretrained=false"])
    bb = Backbone(build_model(cfg.model, device="meta"))
    budget = budget_params(float(cfg.budget.fraction), bb.backbone_params())
    plan = peft_lora_plan(bb, budget)
    assert plan["rank"] == 10 and plan["params_per_rank"] == 72 * 2 * 768
    assert 0.49 < 100 * plan["params"] / bb.backbone_params() < 0.5  # 1,105,920 of 222,903,552


def test_first_norm_random_batch_and_special_ids():
    cfg = compose(["model=tiny_bert"])
    model = build_model(cfg.model, num_labels=2)
    name, norm = first_norm(Backbone(model))
    assert name == "bert.embeddings.LayerNorm" and isinstance(norm, torch.nn.LayerNorm)
    a = random_batch(model, False, 3, 5, 2, seed=1)
    b = random_batch(model, False, 3, 5, 2, seed=1)
    assert a["input_ids"].shape == (3, 5) and a["labels"].shape == (3,)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same seed, the same batch
    assert int(a["input_ids"].min()) >= 1000  # clear of the special ids
    assert fill_special_ids(model) == {}  # encoder-only: nothing to fill
