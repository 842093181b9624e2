"""The one place that knows model families.

A :class:`Backbone` wraps a built HF model and exposes its *stack* (SPEC §2): transformer blocks in
forward data order (encoder blocks, then decoder blocks), and for every block its attention sites,
feed-forward sublayer, linear layers and norm layers under family-independent names. Everything
else in peftds (strategies, budget, inspect, training) works on these descriptions only.

Decoder-only LLMs (Llama, Mistral, Qwen2, Qwen3, Gemma 2/3, Phi-3, GPT-2) are built as
sequence-classification models (a ``score`` head on the last non-padding token); their stack is the
decoder's blocks. Projections fused in one module (Phi-3 ``qkv_proj`` / ``gate_up_proj``, GPT-2
``c_attn``) are described per generic name with an output slice (``AttentionSite.slices``,
``Layer.mlp_slices``), so q, k and v (gate and up) stay separate LoRA targets. GPT-2's ``Conv1D``
(weight stored ``[in, out]``) is read through :func:`linear_dims`.

Backbone size (the budget's reference): every parameter of the model as built except the task head,
shared tensors counted once. Sequence-classification models have no LM head, so tied input/output
embeddings (GPT-2, Gemma, SmolLM2, Qwen2.5 small sizes) count once as the input embedding, and an
untied LM head (Llama-3.1-8B, Mistral-7B, Qwen2.5-7B) does not count: it is not part of the network
that is fine-tuned for classification. On generation tasks the model is a causal LM whose LM head is
frozen backbone: tied, it is the input embedding (counted once); untied, it counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from peftds.config.compose import did_you_mean
from peftds.config.schema import convert
from peftds.config.sections import ModelConfig
from peftds.errors import PeftdsError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

ENCODER, DECODER = "encoder", "decoder"


@dataclass
class AttentionSite:
    """One attention module of a block.

    ``module`` is the HF module whose forward calls the transformers attention interface (it holds
    ``config`` and is passed as first argument to the attention function). ``projections`` maps the
    generic names q/k/v/o to ``(parent, attribute)`` so strategies can read or replace the Linear;
    ``slices`` gives ``(start, stop)`` output columns for names that share a fused module.
    ``kv_heads`` is the number of key/value heads (fewer than the query heads under grouped-query
    attention): the heads a prefix gets.
    """

    kind: str  # "self" | "cross"
    module: nn.Module
    kv_heads: int
    head_dim: int
    projections: dict[str, tuple[nn.Module, str]]
    slices: dict[str, tuple[int, int]] = field(default_factory=dict)

    def linear(self, name: str) -> nn.Module:
        parent, attr = self.projections[name]
        return getattr(parent, attr)


@dataclass
class Layer:
    """One block of the stack with family-independent handles."""

    index: int  # position in the stack, 0-based
    stack: str  # ENCODER | DECODER
    block: nn.Module
    d_model: int
    attentions: list[AttentionSite]
    # (parent, attr) of the module whose output is the FFN sublayer output before residual/dropout
    ffn_out: tuple[nn.Module, str]
    # (parent, attr) of the module whose output is each attention sublayer output (same order as attentions)
    attn_out: list[tuple[nn.Module, str]]
    linears: list[tuple[nn.Module, str]] = field(default_factory=list)  # every backbone Linear in the block
    norms: list[nn.Module] = field(default_factory=list)  # every norm layer in the block
    # the feed-forward projections under generic names (gate, up, down), fused ones with output slices
    mlp: dict[str, tuple[nn.Module, str]] = field(default_factory=dict)
    mlp_slices: dict[str, tuple[int, int]] = field(default_factory=dict)

    def module_at(self, where: tuple[nn.Module, str]) -> nn.Module:
        return getattr(where[0], where[1])


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    seq2seq: bool
    head_prefixes: tuple[str, ...]  # parameter-name prefixes of the task head (trained, counted apart)
    decoder_only: bool = False  # a causal LM (classification head on the last non-padding token)


_SCORE = ("score.",)
FAMILIES = {
    "t5": Family("t5", ("t5", "mt5"), True, ()),
    "bart": Family("bart", ("bart",), True, ()),
    "bert": Family("bert", ("bert",), False, ("bert.pooler.", "classifier.")),
    "roberta": Family("roberta", ("roberta", "xlm-roberta"), False, ("classifier.",)),
    "llama": Family("llama", ("llama",), False, _SCORE, True),
    "mistral": Family("mistral", ("mistral",), False, _SCORE, True),
    "qwen2": Family("qwen2", ("qwen2",), False, _SCORE, True),
    "qwen3": Family("qwen3", ("qwen3",), False, _SCORE, True),
    "gemma2": Family("gemma2", ("gemma2",), False, _SCORE, True),
    "gemma3": Family("gemma3", ("gemma3_text",), False, _SCORE, True),
    "phi3": Family("phi3", ("phi3",), False, _SCORE, True),
    "gpt2": Family("gpt2", ("gpt2",), False, _SCORE, True),
}


def family_of(model_type: str) -> Family:
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    known = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise PeftdsError(f"unsupported model type '{model_type}' (supported: {', '.join(known)})")


def _t5_layers(model: nn.Module) -> list[Layer]:
    cfg = model.config
    layers: list[Layer] = []
    for stack_name, stack in ((ENCODER, model.encoder), (DECODER, model.decoder)):
        for block in stack.block:
            subs = list(block.layer)
            attns, outs = [], []
            for sub in subs[:-1]:
                att = sub.SelfAttention if hasattr(sub, "SelfAttention") else sub.EncDecAttention
                kind = "self" if hasattr(sub, "SelfAttention") else "cross"
                proj = {n: (att, n) for n in ("q", "k", "v", "o")}
                attns.append(AttentionSite(kind, att, cfg.num_heads, cfg.d_kv, proj))
                outs.append((att, "o"))
            ff = subs[-1].DenseReluDense
            lins = [(a.module, n) for a in attns for n in ("q", "k", "v", "o")]
            lins += [(ff, n) for n, m in ff.named_children() if isinstance(m, nn.Linear)]
            norms = [s.layer_norm for s in subs]
            ffn = {"gate": (ff, "wi_0"), "up": (ff, "wi_1")} if hasattr(ff, "wi_0") else {"up": (ff, "wi")}
            ffn["down"] = (ff, "wo")
            layers.append(Layer(len(layers), stack_name, block, cfg.d_model, attns, (ff, "wo"), outs, lins, norms, ffn))
    return layers


def _bart_layers(model: nn.Module) -> list[Layer]:
    cfg = model.config
    inner = model.model
    layers: list[Layer] = []
    for stack_name, stack in ((ENCODER, inner.encoder), (DECODER, inner.decoder)):
        for block in stack.layers:
            pairs = [("self", block.self_attn)]
            if hasattr(block, "encoder_attn"):
                pairs.append(("cross", block.encoder_attn))
            attns = []
            for kind, att in pairs:
                proj = {"q": (att, "q_proj"), "k": (att, "k_proj"), "v": (att, "v_proj"), "o": (att, "out_proj")}
                attns.append(AttentionSite(kind, att, att.num_heads, att.head_dim, proj))
            lins = [p for a in attns for p in a.projections.values()] + [(block, "fc1"), (block, "fc2")]
            norms = [m for m in block.children() if isinstance(m, nn.LayerNorm)]
            outs = [a.projections["o"] for a in attns]
            ffn = {"up": (block, "fc1"), "down": (block, "fc2")}
            layers.append(
                Layer(len(layers), stack_name, block, cfg.d_model, attns, (block, "fc2"), outs, lins, norms, ffn)
            )
    return layers


def _bert_layers(model: nn.Module) -> list[Layer]:
    cfg = model.config
    layers: list[Layer] = []
    for block in model.base_model.encoder.layer:
        att = block.attention.self
        proj = {"q": (att, "query"), "k": (att, "key"), "v": (att, "value"), "o": (block.attention.output, "dense")}
        site = AttentionSite("self", att, cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads, proj)
        lins = [*list(proj.values()), (block.intermediate, "dense"), (block.output, "dense")]
        norms = [block.attention.output.LayerNorm, block.output.LayerNorm]
        ffn = {"up": (block.intermediate, "dense"), "down": (block.output, "dense")}
        layers.append(
            Layer(
                len(layers),
                ENCODER,
                block,
                cfg.hidden_size,
                [site],
                (block.output, "dense"),
                [proj["o"]],
                lins,
                norms,
                ffn,
            )
        )
    return layers


def linear_dims(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an ``nn.Linear`` or of GPT-2's ``Conv1D`` (weight ``[in, out]``)."""
    if isinstance(module, nn.Linear) or hasattr(module, "in_features"):
        return int(module.in_features), int(module.out_features)
    if hasattr(module, "nf") and hasattr(module, "nx"):
        return int(module.nx), int(module.nf)
    raise PeftdsError(f"{type(module).__name__} is not a linear layer")


def _norms_of(block: nn.Module) -> list[nn.Module]:
    """Every norm layer inside a block (LayerNorm, RMSNorm variants; Qwen3's q/k norms included)."""
    return [m for m in block.modules() if isinstance(m, nn.LayerNorm) or type(m).__name__.endswith("RMSNorm")]


def _split(widths: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Consecutive output slices of a fused projection, in the order given."""
    out, start = {}, 0
    for name, width in widths.items():
        out[name] = (start, start + width)
        start += width
    return out


def _decoder_layers(model: nn.Module) -> list[Layer]:
    """Llama-style blocks: ``self_attn`` (q/k/v/o or fused ``qkv_proj``) and ``mlp`` (gate/up/down or
    fused ``gate_up_proj``); Llama, Mistral, Qwen2, Qwen3, Gemma 2/3, Phi-3."""
    cfg = model.config
    layers: list[Layer] = []
    for block in model.base_model.layers:
        att, mlp = block.self_attn, block.mlp
        heads, kv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, att.head_dim
        if hasattr(att, "qkv_proj"):
            proj = {n: (att, "qkv_proj") for n in ("q", "k", "v")}
            slices = _split({"q": heads * hd, "k": kv * hd, "v": kv * hd})
            lins = [(att, "qkv_proj"), (att, "o_proj")]
        else:
            proj = {n: (att, f"{n}_proj") for n in ("q", "k", "v")}
            slices = {}
            lins = [(att, f"{n}_proj") for n in ("q", "k", "v", "o")]
        proj["o"] = (att, "o_proj")
        if hasattr(mlp, "gate_up_proj"):
            ffn = {"gate": (mlp, "gate_up_proj"), "up": (mlp, "gate_up_proj")}
            ffn_slices = _split({"gate": cfg.intermediate_size, "up": cfg.intermediate_size})
            lins += [(mlp, "gate_up_proj"), (mlp, "down_proj")]
        else:
            ffn = {"gate": (mlp, "gate_proj"), "up": (mlp, "up_proj")}
            ffn_slices = {}
            lins += [(mlp, "gate_proj"), (mlp, "up_proj"), (mlp, "down_proj")]
        ffn["down"] = (mlp, "down_proj")
        site = AttentionSite("self", att, kv, hd, proj, slices)
        layers.append(
            Layer(
                len(layers),
                DECODER,
                block,
                cfg.hidden_size,
                [site],
                (mlp, "down_proj"),
                [(att, "o_proj")],
                lins,
                _norms_of(block),
                ffn,
                ffn_slices,
            )
        )
    return layers


def _gpt2_layers(model: nn.Module) -> list[Layer]:
    """GPT-2 blocks: fused ``attn.c_attn`` (q, k, v each d wide), ``attn.c_proj``, ``mlp.c_fc`` / ``c_proj``."""
    cfg = model.config
    layers: list[Layer] = []
    for block in model.base_model.h:
        att, mlp = block.attn, block.mlp
        d = cfg.n_embd
        proj = {"q": (att, "c_attn"), "k": (att, "c_attn"), "v": (att, "c_attn"), "o": (att, "c_proj")}
        site = AttentionSite("self", att, att.num_heads, att.head_dim, proj, _split({"q": d, "k": d, "v": d}))
        lins = [(att, "c_attn"), (att, "c_proj"), (mlp, "c_fc"), (mlp, "c_proj")]
        ffn = {"up": (mlp, "c_fc"), "down": (mlp, "c_proj")}
        layers.append(
            Layer(
                len(layers), DECODER, block, d, [site], (mlp, "c_proj"), [(att, "c_proj")], lins, _norms_of(block), ffn
            )
        )
    return layers


_LAYER_BUILDERS = {
    "t5": _t5_layers,
    "bart": _bart_layers,
    "bert": _bert_layers,
    "roberta": _bert_layers,
    "gpt2": _gpt2_layers,
    **{name: _decoder_layers for name in ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")},
}


class Backbone:
    """A built HF model seen as a stack of layers (SPEC §2)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.family = family_of(model.config.model_type)
        self.layers: list[Layer] = _LAYER_BUILDERS[self.family.name](model)
        # Counted once, before strategies add parameters: the budget's reference (SPEC §3).
        self._backbone_params = sum(p.numel() for n, p in model.named_parameters() if not self.is_head(n))

    @property
    def seq2seq(self) -> bool:
        return self.family.seq2seq

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def decoder_only(self) -> bool:
        return self.family.decoder_only

    def is_head(self, param_name: str) -> bool:
        return any(param_name.startswith(p) for p in self.family.head_prefixes)

    def head_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if self.is_head(n)]

    def backbone_params(self) -> int:
        """Parameters of the pretrained network as built (before any strategy), task head excluded
        (tied weights counted once)."""
        return self._backbone_params

    def head_params(self) -> int:
        return sum(p.numel() for _, p in self.head_parameters())


def align_pad_token(model: nn.Module, pad_token_id: int) -> None:
    """A decoder-only classifier reads the last token that is not ``config.pad_token_id``: make that the
    tokenizer's pad id (pretrained LLM configs often have none; the tokenizer falls back to eos)."""
    if family_of(model.config.model_type).decoder_only:
        model.config.pad_token_id = int(pad_token_id)


def count_trainable(model: nn.Module, backbone: Backbone) -> tuple[int, int]:
    """(trainable params outside the head, trainable head params), shared tensors counted once."""
    body = head = 0
    for n, p in model.named_parameters():
        if p.requires_grad:
            if backbone.is_head(n):
                head += p.numel()
            else:
                body += p.numel()
    return body, head


def is_decoder_only(model_cfg: Any) -> bool:
    """Whether a model config is a decoder-only LLM: from ``model.arch`` when given, else from its HF config."""
    model_cfg = convert(ModelConfig, model_cfg)
    arch = model_cfg.arch
    model_type = arch if arch else hf_config(model_cfg, allow_fallback=False)[0].model_type
    return family_of(model_type).decoder_only


def model_kind(model_type: str) -> str:
    """'seq2seq' (text-to-text) or 'encoder' (classification/regression head)."""
    return "seq2seq" if family_of(model_type).seq2seq else "encoder"


def is_seq2seq(model_cfg: Any) -> bool:
    """Whether a model config is text-to-text: from ``model.arch`` when given, else from its HF config."""
    model_cfg = convert(ModelConfig, model_cfg)
    arch = model_cfg.arch
    model_type = arch if arch else hf_config(model_cfg, allow_fallback=False)[0].model_type
    return family_of(model_type).seq2seq


def resolve_path(name_or_path: str) -> str:
    """``pkg:<module>`` resolves to a model folder shipped inside an installed Python package."""
    if name_or_path.startswith("pkg:"):
        import importlib

        mod_name = name_or_path[4:]
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            raise PeftdsError(
                f"model package '{mod_name}' is not installed (pip install {mod_name.replace('_', '-')})"
            ) from e
        return str(mod.get_model_path())
    return name_or_path


# Keys transformers reads beside a config's own fields: head_dim through getattr (Qwen2, Phi-3 modelling),
# rope_theta and Gemma 3's sliding_window_pattern converted from keyword arguments (rope_parameters, the
# private _sliding_window_pattern).
READ_BESIDE_FIELDS = ("head_dim", "rope_theta", "sliding_window_pattern")


def check_shape(model_cfg: ModelConfig) -> None:
    """`model.shape` typed like every other key: each entry must be a field of the architecture's
    transformers config (or a generation setting such as decoder_start_token_id), with a value of that
    field's type (an int where it holds an int, ...). transformers itself keeps unknown keys silently."""
    if not model_cfg.shape or not model_cfg.arch:
        return
    from transformers import AutoConfig, GenerationConfig

    try:
        defaults = {**GenerationConfig().to_dict(), **AutoConfig.for_model(model_cfg.arch).to_dict()}
    except ValueError as e:
        raise PeftdsError(f"model.arch '{model_cfg.arch}': {str(e).splitlines()[0]}") from None
    defaults = {**dict.fromkeys(READ_BESIDE_FIELDS), **defaults}
    for key, value in model_cfg.shape.items():
        where = f"model.shape.{key}"
        if key not in defaults:
            hint = did_you_mean(key, sorted(defaults)).replace("mean ", "mean model.shape.")
            raise PeftdsError(f"unknown key {where}{hint} (not in the {model_cfg.arch} config)")
        default = defaults[key]
        if default is None or value is None:
            continue
        kind = type(default)
        fits = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float:  # a whole number is a fine float
            fits = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind in (int, float, bool, str) and not fits:
            raise PeftdsError(f"{where} must be {'a number' if kind is float else kind.__name__}, got {value!r}")


def hf_config(model_cfg: Any, allow_fallback: bool) -> tuple[PretrainedConfig, bool]:
    """The transformers config for a model config: from the pretrained folder/hub id when
    ``model.pretrained`` (the default when a name is given), else from ``model.arch`` + ``model.shape``.
    With ``allow_fallback`` (shape-only builds) an unreachable pretrained config falls back to the shape."""
    from transformers import AutoConfig

    model_cfg = convert(ModelConfig, model_cfg)
    name, arch = model_cfg.name_or_path, model_cfg.arch
    if name and model_cfg.pretrained:
        try:
            return AutoConfig.from_pretrained(resolve_path(name)), True
        except OSError as e:
            if not (allow_fallback and arch):
                raise PeftdsError(f"cannot load model {model_cfg.name} ('{name}'): {str(e).splitlines()[0]}") from e
    if not arch:
        raise PeftdsError("model config needs model.name_or_path (pretrained) or model.arch + model.shape")
    check_shape(model_cfg)
    try:
        return AutoConfig.for_model(arch, **dict(model_cfg.get("shape") or {})), False
    except Exception as e:  # transformers' own validation (e.g. heads not dividing the width)
        raise PeftdsError(f"cannot build model.arch '{arch}' with model.shape: {e}") from e


def build_model(model_cfg: Any, num_labels: int | None = None, device: str | torch.device | None = None) -> nn.Module:
    """Build the HF model for a ``model`` config.

    Pretrained weights come from ``model.name_or_path`` (a hub id, a folder, or ``pkg:<module>`` for a
    model shipped in a pip package); with ``model.pretrained=false`` (or no name) ``model.arch`` (a
    transformers model type) plus ``model.shape`` (config kwargs) builds a random-initialised model
    seeded by ``model.init_seed``. Encoder-only families get a sequence-classification head with
    ``num_labels`` outputs (1 = regression); seq2seq families are text-to-text LMs; decoder-only families
    get the classification head when ``num_labels`` is given, else they are causal LMs (generation). ``device='meta'``
    builds shapes only (counting paper-size models without weights).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    model_cfg = convert(ModelConfig, model_cfg)
    meta = str(device) == "meta"
    config, pretrained = hf_config(model_cfg, allow_fallback=meta)
    fam = family_of(config.model_type)
    if fam.seq2seq:
        auto = AutoModelForSeq2SeqLM
    elif fam.decoder_only and num_labels is None:
        auto = AutoModelForCausalLM  # generation tasks: the LM head is part of the frozen backbone
    else:
        auto = AutoModelForSequenceClassification
    attn = model_cfg.get("attn_implementation") or "sdpa"
    if getattr(config, "attn_logit_softcapping", None) and attn != "eager":
        # transformers' sdpa refuses a soft-cap at the first forward: say so before anything is built
        raise PeftdsError(
            f"model.attn_implementation={attn}: {config.model_type} soft-caps attention logits, which only "
            "eager attention applies (use model.attn_implementation=eager)"
        )
    head = {}
    if not fam.seq2seq and num_labels is not None:
        head = {"num_labels": num_labels, "problem_type": "regression" if num_labels == 1 else None}
    if pretrained and not meta:
        return auto.from_pretrained(resolve_path(model_cfg["name_or_path"]), attn_implementation=attn, **head)
    for k, v in head.items():
        setattr(config, k, v)
    if meta:
        with torch.device("meta"):
            return auto.from_config(config, attn_implementation=attn)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(model_cfg.get("init_seed", 0)))
        return auto.from_config(config, attn_implementation=attn)
