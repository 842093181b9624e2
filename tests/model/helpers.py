"""Tiny random-initialised models of every family and small helpers for the strategy tests
(imported as ``tests.model.helpers``)."""

from __future__ import annotations

import torch
from torch import nn

from peftds.model.backbones import Backbone
from peftds.model.strategies import APPLY_ORDER, LayerShape, get_strategy

VOCAB = 128
FAMILIES = ("t5", "bart", "bert", "roberta")
SEQ2SEQ = ("t5", "bart")
# Decoder-only LLM families: GQA (2 key/value heads for 4 query heads) where the family has it,
# head_dim 16 != hidden / heads = 8 (head_dim must come from the config), sliding windows of 4 on a
# 7-token input (the window bites), Gemma 2's soft-cap small enough to change the attention.
DECODERS = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "gpt2")
_LLAMA_LIKE = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
_WINDOW = dict(sliding_window=4)
# family -> (transformers model type, config kwargs, attention kernel)
DECODER_SHAPES = {
    "llama": ("llama", _LLAMA_LIKE, "sdpa"),
    "mistral": ("mistral", {**_LLAMA_LIKE, **_WINDOW}, "sdpa"),
    "qwen2": ("qwen2", _LLAMA_LIKE, "sdpa"),
    "qwen3": ("qwen3", _LLAMA_LIKE, "sdpa"),
    # Gemma 2's soft-cap exists only in eager attention (sdpa refuses it)
    "gemma2": (
        "gemma2",
        {**_LLAMA_LIKE, **_WINDOW, "attn_logit_softcapping": 0.5, "query_pre_attn_scalar": 8},
        "eager",
    ),
    "gemma3": (
        "gemma3_text",
        {**_LLAMA_LIKE, **_WINDOW, "query_pre_attn_scalar": 8, "sliding_window_pattern": 2},
        "sdpa",
    ),
    "phi3": ("phi3", {k: v for k, v in _LLAMA_LIKE.items() if k != "head_dim"}, "sdpa"),
    "gpt2": (
        "gpt2",
        dict(
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=64,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
        "sdpa",
    ),
}


def decoder_model_config(family: str, attn: str | None = None) -> dict:
    """The peftds ``model`` config of a tiny decoder-only family (random init)."""
    arch, shape, default_attn = DECODER_SHAPES[family]
    return {
        "name": f"tiny_{family}",
        "pretrained": False,
        "arch": arch,
        "shape": dict(shape),
        "attn_implementation": default_attn if family == "gemma2" or attn is None else attn,
        "tokenizer": None,
    }


def decoder_lm(family: str, seed: int = 0) -> nn.Module:
    """The tiny decoder as a causal LM (generation checks), in eval mode."""
    import transformers as tf

    arch, shape, attn = DECODER_SHAPES[family]
    torch.manual_seed(seed)
    cfg = tf.AutoConfig.for_model(arch, **shape)
    return tf.AutoModelForCausalLM.from_config(cfg, attn_implementation=attn).eval()


def build_model(family: str, attn: str = "sdpa", seed: int = 0) -> nn.Module:
    """A tiny model in eval mode (dropout 0). T5 has h·d_kv = 64 != d_model = 32."""
    import transformers as tf

    torch.manual_seed(seed)
    if family == "t5":
        cfg = tf.T5Config(
            vocab_size=VOCAB,
            d_model=32,
            num_heads=4,
            d_kv=16,
            d_ff=64,
            num_layers=2,
            num_decoder_layers=2,
            dropout_rate=0.0,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
        )
        model = tf.T5ForConditionalGeneration(cfg)
    elif family == "bart":
        cfg = tf.BartConfig(
            vocab_size=VOCAB,
            d_model=32,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            max_position_embeddings=64,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            decoder_start_token_id=2,
            forced_eos_token_id=None,
        )
        model = tf.BartForConditionalGeneration(cfg)
    elif family in ("bert", "roberta"):
        kw = dict(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            num_labels=3,
        )
        if family == "bert":
            model = tf.BertForSequenceClassification(tf.BertConfig(max_position_embeddings=64, **kw))
        else:
            model = tf.RobertaForSequenceClassification(
                tf.RobertaConfig(max_position_embeddings=66, pad_token_id=1, **kw)
            )
    elif family in DECODERS:
        from peftds.model.backbones import build_model as build_backbone

        model_cfg = {**decoder_model_config(family, attn), "init_seed": seed}
        model = build_backbone(model_cfg, num_labels=3)
        attn = model_cfg["attn_implementation"]
    else:
        raise ValueError(family)
    model.set_attn_implementation(attn)
    assert model.config._attn_implementation == attn
    return model.eval()


def frozen(family: str, attn: str = "sdpa", seed: int = 0) -> tuple[nn.Module, Backbone]:
    model = build_model(family, attn, seed)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, Backbone(model)


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def apply_plan(bb: Backbone, plan: dict[int, dict[str, tuple[int, dict]]]) -> int:
    """Apply ``{layer_index: {strategy: (size, hp_overrides)}}``; returns the summed cost() forecast."""
    used: dict[str, dict] = {}
    for per_layer in plan.values():
        for name, (_, over) in per_layer.items():
            used.setdefault(name, get_strategy(name).hparams(over))
    for name, hp in used.items():
        get_strategy(name).prepare(bb, hp)
    total = 0
    for idx, per_layer in plan.items():
        layer = bb.layers[idx]
        shape = LayerShape.of(layer)
        for name in APPLY_ORDER:
            if name in per_layer:
                size, over = per_layer[name]
                strat = get_strategy(name)
                hp = strat.hparams(over)
                total += strat.cost(shape, size, hp)
                strat.apply(bb, layer, size, hp)
    return total


def uniform_plan(bb: Backbone, names: dict[str, tuple[int, dict]]) -> dict:
    return {layer.index: dict(names) for layer in bb.layers}


def batch(family: str, seed: int = 1, pad: bool = True, bsz: int = 3, src_len: int = 7, tgt_len: int = 5):
    """Model inputs; with ``pad`` the rows are right-padded to different lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (bsz, src_len), generator=g)
    mask = torch.ones(bsz, src_len, dtype=torch.long)
    if pad:
        for i in range(1, bsz):
            mask[i, src_len - 2 * i :] = 0
    pad_id = 0 if family in ("t5", *DECODERS) else 1
    ids = ids.masked_fill(mask == 0, pad_id)
    out = {"input_ids": ids, "attention_mask": mask}
    if family in SEQ2SEQ:
        out["decoder_input_ids"] = torch.randint(3, VOCAB, (bsz, tgt_len), generator=g)
    return out


def outputs(model: nn.Module, inputs: dict) -> torch.Tensor:
    return model(**inputs).logits
