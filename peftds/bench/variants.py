"""The variants `peftds bench` times: the design(s), peft LoRA at the same budget, the frozen floor, full
fine-tuning and forward only, all deep copies of one backbone build; and the random batch they share."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from peftds.bench.device import autocast_for, sync
from peftds.bench.loop import make_optimizer, train_step, trainable
from peftds.bench.settings import VARIANTS
from peftds.config.sections import BenchConfig
from peftds.design.apply import apply_plan, freeze, resolve
from peftds.design.budget import budget_params
from peftds.errors import PeftdsError
from peftds.model.backbones import Backbone, build_model, count_trainable, linear_dims
from peftds.model.strategies.base import innermost_linear
from peftds.run_config import RunConfig


def first_norm(backbone: Backbone) -> tuple[str, nn.Module]:
    """The first norm layer in forward order: the embedding norm where there is one (BERT, RoBERTa,
    BART), else the first block's first norm (T5)."""
    names = {id(m): n for n, m in backbone.model.named_modules()}
    for name, mod in backbone.model.named_modules():
        if "embed" in name.lower() and "norm" in type(mod).__name__.lower():
            return name, mod
    norm = backbone.layers[0].norms[0]
    return names.get(id(norm), "layers[0].norms[0]"), norm


def peft_lora_plan(backbone: Backbone, budget: int) -> dict[str, Any]:
    """HF peft LoRA on q and v of every attention module: the largest rank whose count fits ``budget``.

    peft targets modules by name: the family's own attribute names of the q and v projections (one
    fused module where q and v share one, Phi-3 ``qkv_proj`` / GPT-2 ``c_attn``, adapted whole)."""
    targets: list[str] = []
    modules: dict[int, nn.Module] = {}
    for layer in backbone.layers:
        for site in layer.attentions:
            for t in ("q", "v"):
                parent, attr = site.projections[t]
                targets += [] if attr in targets else [attr]
                lin = innermost_linear(getattr(parent, attr))
                modules[id(lin)] = lin
    per_rank = sum(sum(linear_dims(lin)) for lin in modules.values())
    rank = int(budget // per_rank) if per_rank else 0
    return {
        "targets": targets,
        "params_per_rank": per_rank,
        "rank": rank,
        "params": rank * per_rank,
        "next_rank_params": (rank + 1) * per_rank,
    }


@dataclass
class Variant:
    """One timed variant and what was measured on it."""

    name: str
    label: str
    model: nn.Module  # the HF model object (for counting)
    call: Callable[..., Any]  # what the step calls with the batch (model, peft wrapper or compiled module)
    opt: torch.optim.Optimizer | None
    trainable: int
    head: int
    train: bool = True
    compiled: bool = False
    times: list[float] = field(default_factory=list)
    step_mem: int | None = None
    resident: int | None = None
    loss: float | None = None

    def step(self, batch: Mapping[str, torch.Tensor], device: torch.device, bf16: bool) -> float:
        """One step (training, or a no-grad forward for ``forward``); returns its wall time in seconds."""
        sync(device)
        t0 = time.perf_counter()
        if self.train:
            loss = train_step(self.call, self.opt, batch, device, bf16)
        else:
            with torch.no_grad(), autocast_for(device, bf16):
                loss = self.call(**batch).loss
        sync(device)
        dt = time.perf_counter() - t0
        self.loss = float(loss.detach().float())
        return dt


def random_batch(
    model: nn.Module,
    seq2seq: bool,
    batch_size: int,
    source_len: int,
    target_len: int,
    seed: int,
    num_labels: int = 2,
) -> dict[str, torch.Tensor]:
    """One random batch (full-length rows; token ids avoid the low special ids)."""
    g = torch.Generator().manual_seed(int(seed))
    vocab = int(model.config.vocab_size)
    lo = min(1000, vocab // 2)
    ids = torch.randint(lo, vocab, (batch_size, source_len), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if seq2seq:
        batch["labels"] = torch.randint(lo, vocab, (batch_size, target_len), generator=g)
    elif num_labels == 1:
        batch["labels"] = torch.rand(batch_size, generator=g) * 5
    else:
        batch["labels"] = torch.randint(0, num_labels, (batch_size,), generator=g)
    return batch


def fill_special_ids(model: nn.Module) -> dict[str, int]:
    """Shape-only text-to-text configs (e.g. conf/model/t5_base.yaml with model.pretrained=false) may lack
    the ids a training forward needs (T5 shifts labels right from ``decoder_start_token_id``): fill them
    the way the published configs set them (T5: start = pad = 0). Returns what was filled."""
    cfg = model.config
    if not getattr(cfg, "is_encoder_decoder", False):
        return {}
    filled = {}
    if getattr(cfg, "pad_token_id", None) is None:
        cfg.pad_token_id = filled["pad_token_id"] = 0
    if getattr(cfg, "decoder_start_token_id", None) is None:
        cfg.decoder_start_token_id = filled["decoder_start_token_id"] = int(cfg.pad_token_id)
    return filled


def build_variants(
    run: RunConfig,
    bench: BenchConfig,
    extra_designs: Mapping[str, Mapping[str, Any] | str],
    device: torch.device,
) -> tuple[list[Variant], dict[str, Any]]:
    """The variants of one bench run and the run's shared facts (budget, peft plan, ...).

    ``extra_designs``: ``design:<name>`` -> its design config, or the error that composing it raised
    (reported, the other variants are still timed)."""
    wanted = list(bench.variants) or list(VARIANTS)
    lr = bench.lr
    fraction = run.budget.fraction

    t0 = time.time()
    base = build_model(run.model, num_labels=2)
    filled = fill_special_ids(base)
    probe = Backbone(base)
    n_backbone = probe.backbone_params()
    budget = budget_params(fraction, n_backbone)
    build_s = time.time() - t0

    def fresh() -> tuple[nn.Module, Backbone]:
        m = copy.deepcopy(base)
        return m, Backbone(m)

    def optimizer(m: nn.Module) -> torch.optim.Optimizer:
        return make_optimizer(trainable(m), lr, device)

    variants: list[Variant] = []
    info: dict[str, Any] = {
        "backbone_params": n_backbone,
        "budget_params": budget,
        "budget_fraction": fraction,
        "seq2seq": probe.seq2seq,
        "family": probe.family.name,
        "designs": {},
        "filled_config": filled,
        "errors": {},
    }

    def design_variant(name: str, design_cfg: Mapping[str, Any]) -> Variant:
        m, bb = fresh()
        plan = resolve(bb, design_cfg, fraction, seed=run.seed, model_cfg=run.model)
        apply_plan(bb, plan)
        m.to(device).train()
        body, head = count_trainable(m, bb)
        info["designs"][name] = {
            "design": plan.design,
            "compact": plan.compact(),
            "trainable_params": body,
            "budget_params": plan.budget_params,
            "full": plan.full,
        }
        label = name if name != "design" else f"design {plan.design}"
        return Variant(name, label, m, m, optimizer(m), body, head)

    if "design" in wanted:
        variants.append(design_variant("design", run.design_config))
    for name, design_cfg in extra_designs.items():
        if isinstance(design_cfg, str):
            info["errors"][name] = design_cfg
            continue
        try:  # an extra design that cannot be built is reported, the others are still timed
            variants.append(design_variant(name, design_cfg))
        except Exception as e:
            info["errors"][name] = f"{type(e).__name__}: {e}"

    if "peft_lora" in wanted:
        variants.extend(peft_lora_variant(fresh, budget, bench.lora_alpha, optimizer, device, info))

    floor_model = None
    if "floor" in wanted or "forward" in wanted:
        m, bb = fresh()
        freeze(bb)
        norm_name, norm = first_norm(bb)
        for p in norm.parameters():
            p.requires_grad = True
        m.to(device).train()
        info["floor_norm"] = norm_name
        floor_model = m
        if "floor" in wanted:
            body, head = count_trainable(m, bb)
            variants.append(Variant("floor", "floor (1st norm only)", m, m, optimizer(m), body, head))
    if "full" in wanted:
        m, bb = fresh()
        freeze(bb, full=True)
        m.to(device).train()
        body, head = count_trainable(m, bb)
        variants.append(Variant("full", "full FT", m, m, optimizer(m), body, head))
    if "forward" in wanted:
        variants.append(Variant("forward", "forward only (no grad)", floor_model, floor_model, None, 0, 0, train=False))
    info["build_s"] = build_s
    return variants, info


def peft_lora_variant(
    fresh: Callable[[], tuple[nn.Module, Backbone]],
    budget: int,
    alpha: float,
    optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    device: torch.device,
    info: dict[str, Any],
) -> list[Variant]:
    """HF peft LoRA at the largest rank that fits ``budget`` (none when rank 1 does not fit);
    its plan goes to ``info["peft_lora"]``."""
    from peft import LoraConfig, get_peft_model

    m, bb = fresh()
    pl = peft_lora_plan(bb, budget)
    info["peft_lora"] = {**pl, "alpha": alpha, "budget_params": budget}
    if pl["rank"] < 1:
        info["peft_lora"]["skipped"] = "the budget cannot afford rank 1"
        return []
    lora = LoraConfig(r=pl["rank"], lora_alpha=alpha, lora_dropout=0.0, target_modules=pl["targets"], bias="none")
    pm = get_peft_model(m, lora)
    for n, p in m.named_parameters():
        if bb.is_head(n):
            p.requires_grad = True
    m.to(device).train()
    body, head = count_trainable(m, bb)
    info["peft_lora"]["built_params"] = body
    if body != pl["params"]:
        raise PeftdsError(f"internal error: peft LoRA rank {pl['rank']} built {body} params, formula {pl['params']}")
    return [Variant("peft_lora", f"peft LoRA r={pl['rank']}", m, pm, optimizer(m), body, head)]
