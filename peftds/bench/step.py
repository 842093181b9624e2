"""Speed benchmarks (issue #5).

``peftds bench model=... design=... [bench.batch_size=.. bench.source_len=.. bench.target_len=..
bench.steps=..]`` times, in one process and on the same random batch, the median training step
(forward + backward + AdamW step) of

* ``design``     the design as peftds builds it (``design=``; more with ``bench.designs=[lora,prefix]``);
* ``peft_lora``  HF peft LoRA on the query and value projections (T5 ``q,v``; BART ``q_proj,v_proj``;
                 BERT/RoBERTa ``query,value``) with the largest rank whose parameter count fits the
                 design's budget (both counts reported);
* ``floor``      the frozen backbone with only its first layer norm trainable (the embedding norm where
                 the model has one): every PEFT step pays this backward through the whole stack;
* ``full``       full fine-tuning;
* ``forward``    the backbone's forward alone (train mode, no autograd);
* ``design_compiled`` (``bench.compile=true``) the design's step through ``torch.compile``.

All variants start from the same backbone weights (one random-init or pretrained build, deep-copied).
Steps are interleaved round by round (variant order rotated each round), so a slow phase of a shared
machine hits every variant alike; the reported figure is the median of ``bench.steps`` timed rounds
after ``bench.warmup`` untimed ones. Encoder-only models train their task head in every variant
(head counted apart). On a GPU steps run under bf16 autocast (``bench.bf16=auto``) with
``torch.cuda.synchronize`` around each step.

Memory: after timing, one more step per variant measures the step's peak above what was allocated
before it (GPU: ``torch.cuda.max_memory_allocated``; CPU: the process's VmHWM, reset through
``/proc/self/clear_refs`` after ``malloc_trim``), and the reported peak is that plus the variant's own
resident tensors (weights, buffers, optimizer state): the memory the variant would need alone.
``process_peak_rss_mb`` is the whole process's peak RSS.

CPU: timing runs with ``bench.threads`` torch threads (default 1, see :class:`cpu_threads`).

``peftds bench-data`` reports, per task, the tokens a training epoch processes with fixed padding,
random batches with dynamic padding and length-grouped batches (both the whole-set sort and the
default mega-batches), how much batches re-mix between epochs, and the measured epoch time of each
scheme on a sample. ``peftds bench-eval`` compares label-word ranking with free generation for
text-to-text classification (examples/s and agreement).

``bench.epoch=true`` appends the bench-data report to ``peftds bench``.

:func:`compile_model` is the one way peftds compiles a model: static shapes (``dynamic=False``), so each
batch shape compiles once; with length buckets (:class:`peftds.data.batching.Collator`) the number of
compilations is the number of shapes used, counted by :class:`CompileCounter` from dynamo's own
counters. :class:`CompiledModel` (used by ``bench.compile=true`` and ``train.compile=true``) wraps it,
counts compilations per batch shape, and falls back to eager (saying why) when a shape it already
compiled compiles again, instead of recompiling on every step. A compiled bench variant that falls
back is reported as not timed.
"""
from __future__ import annotations

import copy
import ctypes
import json
import math
import os
import re
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from peftds.config.compose import plain
from peftds.errors import PeftdsError

PEFT_TARGETS = {"t5": ["q", "v"], "bart": ["q_proj", "v_proj"], "bert": ["query", "value"], "roberta": ["query", "value"]}
VARIANTS = ("design", "peft_lora", "floor", "full", "forward")
LABELS = {"design": "design", "peft_lora": "peft LoRA", "floor": "floor (1st norm)", "full": "full FT",
          "forward": "forward only"}
# Compiled vs eager loss: relative tolerance (fp32 / bf16 autocast).
COMPILE_RTOL = {"fp32": 1e-4, "bf16": 2e-2}


# ============================================================================ small utilities


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def _quantile(xs: Sequence[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo, hi = int(math.floor(pos)), int(math.ceil(pos))
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))


def _model_name(argv: Sequence[str], default: str = "minilm_l6") -> str:
    for a in argv:
        if a.startswith("model="):
            return a.split("=", 1)[1]
    return default


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PeftdsError("bench.device=cuda but no GPU is available")
    return dev


def use_bf16(setting: Any, device: torch.device) -> bool:
    if setting in (None, "auto"):
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return bool(setting)


def autocast_for(device: torch.device, bf16: bool):
    if bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class cpu_threads:
    """``torch.set_num_threads(n)`` inside the block (``n`` falsy: unchanged), restored after.

    One thread is the bench default on CPU: with torch's default (one per core) a step waits for every
    OpenMP worker, and on a machine shared with other jobs a descheduled worker stalls each parallel
    region; measured here (2 cores, other jobs running) a tiny_t5 step took 0.15-8 s with 2 threads
    and a steady 45 ms with 1."""

    def __init__(self, n: Any):
        self.n = int(n) if n else None
        self.before = None

    def __enter__(self):
        if self.n:
            self.before = torch.get_num_threads()
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        if self.before is not None:
            torch.set_num_threads(self.before)
        return False


# ============================================================================ memory
_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    return _LIBC or None


def _proc_status_kib(field_name: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field_name}:\s+(\d+)\s+kB", text, re.M)
    return int(m.group(1)) if m else None


class MemoryProbe:
    """Peak memory of one step above what was allocated before it (bytes)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "rss"
        self._reset_ok = False
        if device.type != "cuda":
            self._reset_ok = self._reset_hwm()
            if not self._reset_ok:
                self.kind = "rss_unreset"  # VmHWM cannot be reset: increments are lower bounds

    def _reset_hwm(self) -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def begin(self) -> int:
        import gc

        gc.collect()
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device)
        libc = _libc()
        if libc is not None:  # hand freed heap pages back, so RSS before the step ~ live tensors
            try:
                libc.malloc_trim(0)
            except (AttributeError, OSError):
                pass
        if self._reset_ok:
            self._reset_hwm()
        return (_proc_status_kib("VmRSS") or 0) * 1024

    def end(self, before: int) -> int:
        if self.device.type == "cuda":
            sync(self.device)
            return max(0, torch.cuda.max_memory_allocated(self.device) - before)
        return max(0, (_proc_status_kib("VmHWM") or 0) * 1024 - before)


def process_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            continue
        key = (t.untyped_storage().data_ptr(), t.device)
        if key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


def resident_bytes(model: nn.Module, opt: torch.optim.Optimizer | None) -> int:
    ts = list(model.parameters()) + list(model.buffers())
    if opt is not None:
        for st in opt.state.values():
            ts.extend(v for v in st.values() if isinstance(v, torch.Tensor))
    return tensor_bytes(ts)


# ============================================================================ compilation
class CompileCounter:
    """Dynamo's compilation counters between :meth:`start` (or construction) and now."""

    def __init__(self):
        self.start()

    @staticmethod
    def _now() -> dict[str, int]:
        try:
            from torch._dynamo.utils import counters
        except ImportError:  # pragma: no cover
            return {"frames": 0, "graphs": 0, "graph_breaks": 0}
        return {"frames": int(counters["frames"]["total"]), "graphs": int(counters["stats"]["unique_graphs"]),
                "graph_breaks": int(sum(counters["graph_break"].values()))}

    def start(self) -> None:
        self._base = self._now()

    def delta(self) -> dict[str, int]:
        now = self._now()
        return {k: now[k] - self._base[k] for k in now}


def compile_model(model: nn.Module, mode: str | None = None, recompile_limit: int = 64) -> nn.Module:
    """``torch.compile`` with static shapes: every new batch shape compiles once (bounded by the length
    buckets in use), never a dynamic-shape graph. Raises dynamo's recompile limit to ``recompile_limit``
    so bucketed shapes never silently fall back to eager. Returns the compiled module (it shares the
    model's parameters)."""
    import torch._dynamo

    conf = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(conf, name):
            setattr(conf, name, max(int(getattr(conf, name)), recompile_limit))
    if hasattr(conf, "accumulated_recompile_limit"):
        conf.accumulated_recompile_limit = max(int(conf.accumulated_recompile_limit), 4 * recompile_limit)
    elif hasattr(conf, "accumulated_cache_size_limit"):
        conf.accumulated_cache_size_limit = max(int(conf.accumulated_cache_size_limit), 4 * recompile_limit)
    kwargs: dict[str, Any] = {"dynamic": False}
    if mode:
        kwargs["mode"] = mode
    return torch.compile(model, **kwargs)


class CompiledModel:
    """A model's forward through :func:`compile_model`, with its compilations counted per batch shape.

    Call it like the model. Each new (shape signature, train/eval, grad mode) compiles once; if a
    signature it has already compiled compiles again (a guard that fails on every call, e.g. on Python
    state that changes between forwards), the recompilation is counted and, past
    ``max_recompiles``, the wrapper falls back to the eager model for good and says why in
    :meth:`stats` (``fallback``) instead of recompiling on every step.
    """

    def __init__(self, model: nn.Module, mode: str | None = None, max_recompiles: int = 0):
        self.model = model
        self.compiled = compile_model(model, mode=mode)
        self.counter = CompileCounter()
        self.max_recompiles = int(max_recompiles)
        self.signatures: dict[tuple, int] = {}
        self.recompiles = 0
        self.fallback: str | None = None

    @staticmethod
    def signature(model: nn.Module, kwargs: Mapping[str, Any]) -> tuple:
        shapes = tuple(sorted((k, tuple(v.shape), str(v.dtype)) for k, v in kwargs.items() if torch.is_tensor(v)))
        return shapes, model.training, torch.is_grad_enabled()

    def __call__(self, *args, **kwargs):
        if self.fallback:
            return self.model(*args, **kwargs)
        key = self.signature(self.model, kwargs)
        before = self.counter.delta()["frames"]
        out = self.compiled(*args, **kwargs)
        grew = self.counter.delta()["frames"] - before
        if key in self.signatures and grew:
            self.recompiles += grew
            if self.recompiles > self.max_recompiles:
                self.fallback = (f"recompiled {self.recompiles}x for batch shapes it had already compiled (a guard fails "
                                 f"on every call; run with TORCH_LOGS=recompiles for the reason): running eager")
                import warnings

                warnings.warn(f"peftds compile: {self.fallback}", RuntimeWarning, stacklevel=2)
        self.signatures[key] = self.signatures.get(key, 0) + grew
        return out

    def stats(self) -> dict[str, Any]:
        src = sorted({dict((k, shp) for k, shp, _ in sig[0]).get("input_ids", (0, 0))[-1] for sig in self.signatures})
        return {**self.counter.delta(), "batch_shapes": len(self.signatures), "source_lengths": src,
                "recompiles": self.recompiles, "fallback": self.fallback}


# ============================================================================ building the variants
def first_norm(backbone) -> tuple[str, nn.Module]:
    """The first norm layer in forward order: the embedding norm where there is one (BERT, RoBERTa,
    BART), else the first block's first norm (T5)."""
    names = {id(m): n for n, m in backbone.model.named_modules()}
    for name, mod in backbone.model.named_modules():
        if "embed" in name.lower() and "norm" in type(mod).__name__.lower():
            return name, mod
    norm = backbone.layers[0].norms[0]
    return names.get(id(norm), "layers[0].norms[0]"), norm


def peft_lora_plan(backbone, budget: int) -> dict[str, Any]:
    """HF peft LoRA on q and v of every attention module: the largest rank whose count fits ``budget``."""
    targets = PEFT_TARGETS.get(backbone.family.name)
    if not targets:
        raise PeftdsError(f"no peft LoRA targets known for family '{backbone.family.name}'")
    per_rank = 0
    for layer in backbone.layers:
        for site in layer.attentions:
            for t in ("q", "v"):
                lin = site.linear(t)
                lin = getattr(lin, "base_layer", lin)
                per_rank += lin.in_features + lin.out_features
    rank = int(budget // per_rank) if per_rank else 0
    return {"targets": targets, "params_per_rank": per_rank, "rank": rank, "params": rank * per_rank,
            "next_rank_params": (rank + 1) * per_rank}


@dataclass
class Variant:
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
        sync(device)
        t0 = time.perf_counter()
        if self.train:
            with autocast_for(device, bf16):
                loss = self.call(**batch).loss
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        else:
            with torch.no_grad(), autocast_for(device, bf16):
                loss = self.call(**batch).loss
        sync(device)
        dt = time.perf_counter() - t0
        self.loss = float(loss.detach().float())
        return dt


def make_optimizer(params: list[nn.Parameter], lr: float, device: torch.device) -> torch.optim.Optimizer:
    kw: dict[str, Any] = {"lr": lr}
    if device.type == "cuda":
        kw["fused"] = True
    else:
        kw["foreach"] = True
    return torch.optim.AdamW(params, **kw)


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def random_batch(model: nn.Module, seq2seq: bool, batch_size: int, source_len: int, target_len: int, seed: int,
                 num_labels: int = 2) -> dict[str, torch.Tensor]:
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


def _fill_special_ids(model: nn.Module) -> dict[str, int]:
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


def _compose_design(argv: Sequence[str], design: str):
    from peftds.config.compose import compose

    keep = [a for a in argv if not re.match(r"\+?design(\.|=)", a)]
    return compose([*keep, f"design={design}"]).design


def build_variants(cfg, argv: Sequence[str], device: torch.device) -> tuple[list[Variant], dict[str, Any]]:
    """The variants of one bench run and the run's shared facts (budget, peft plan, ...)."""
    from peftds.design.apply import apply_plan, freeze, resolve
    from peftds.model.backbones import Backbone, build_model, count_trainable
    from peftds.design.budget import budget_params

    bc = cfg.bench
    wanted = list(plain(bc.variants) or VARIANTS)
    bad = [v for v in wanted if v not in VARIANTS]
    if bad:
        raise PeftdsError(f"bench.variants: unknown {bad} (known: {', '.join(VARIANTS)})")
    lr = float(bc.lr)
    fraction = float(cfg.budget.fraction)
    seed = int(cfg.seed)

    t0 = time.time()
    base = build_model(cfg.model, num_labels=2)
    filled = _fill_special_ids(base)
    seq2seq_probe = Backbone(base)
    seq2seq = seq2seq_probe.seq2seq
    n_backbone = seq2seq_probe.backbone_params()
    budget = budget_params(fraction, n_backbone)
    build_s = time.time() - t0

    def fresh():
        m = copy.deepcopy(base)
        return m, Backbone(m)

    variants: list[Variant] = []
    info: dict[str, Any] = {"backbone_params": n_backbone, "budget_params": budget, "budget_fraction": fraction,
                            "seq2seq": seq2seq, "family": seq2seq_probe.family.name, "designs": {},
                            "filled_config": filled}

    def design_variant(name: str, design_cfg) -> Variant:
        m, bb = fresh()
        plan = resolve(bb, design_cfg, fraction, seed=seed, model_cfg=cfg.model)
        apply_plan(bb, plan)
        m.to(device).train()
        body, head = count_trainable(m, bb)
        info["designs"][name] = {"design": plan.design, "compact": plan.compact(), "trainable_params": body,
                                 "budget_params": plan.budget_params, "full": plan.full}
        return Variant(name, name if name != "design" else f"design {plan.design}", m, m,
                       make_optimizer(_trainable(m), lr, device), body, head)

    if "design" in wanted:
        variants.append(design_variant("design", cfg.design))
    for extra in plain(bc.designs) or []:
        name = f"design:{Path(str(extra)).stem}"
        try:  # an extra design that cannot be built is reported, the others are still timed
            variants.append(design_variant(name, _compose_design(argv, str(extra))))
        except Exception as e:  # noqa: BLE001
            info.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}"

    if "peft_lora" in wanted:
        from peft import LoraConfig, get_peft_model

        m, bb = fresh()
        pl = peft_lora_plan(bb, budget)
        info["peft_lora"] = {**pl, "alpha": int(bc.lora_alpha), "budget_params": budget}
        if pl["rank"] < 1:
            info["peft_lora"]["skipped"] = "the budget cannot afford rank 1"
        else:
            pm = get_peft_model(m, LoraConfig(r=pl["rank"], lora_alpha=int(bc.lora_alpha), lora_dropout=0.0,
                                              target_modules=pl["targets"], bias="none"))
            for n, p in m.named_parameters():
                if bb.is_head(n):
                    p.requires_grad = True
            m.to(device).train()
            body, head = count_trainable(m, bb)
            info["peft_lora"]["built_params"] = body
            if body != pl["params"]:
                raise PeftdsError(f"internal error: peft LoRA rank {pl['rank']} built {body} params, formula {pl['params']}")
            variants.append(Variant("peft_lora", f"peft LoRA r={pl['rank']}", m, pm,
                                    make_optimizer(_trainable(m), lr, device), body, head))

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
            variants.append(Variant("floor", "floor (1st norm only)", m, m, make_optimizer(_trainable(m), lr, device),
                                    body, head))
    if "full" in wanted:
        m, bb = fresh()
        freeze(bb, full=True)
        m.to(device).train()
        body, head = count_trainable(m, bb)
        variants.append(Variant("full", "full FT", m, m, make_optimizer(_trainable(m), lr, device), body, head))
    if "forward" in wanted:
        variants.append(Variant("forward", "forward only (no grad)", floor_model, floor_model, None, 0, 0, train=False))
    del base
    info["build_s"] = build_s
    return variants, info


# ============================================================================ running the bench
def _outputs_check(v: Variant, compiled: Callable, batch, device, bf16) -> dict[str, Any]:
    """Eval-mode (no dropout) forward of the eager and the compiled model on the same batch."""
    model = v.model
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast_for(device, bf16):
            ref = model(**batch)
            out = compiled(**batch)
        ref_loss, out_loss = float(ref.loss.float()), float(out.loss.float())
        diff = float((ref.logits.float() - out.logits.float()).abs().max())
    finally:
        model.train(was)
    rtol = COMPILE_RTOL["bf16" if bf16 else "fp32"]
    rel = abs(out_loss - ref_loss) / max(abs(ref_loss), 1e-12)
    return {"eager_loss": ref_loss, "compiled_loss": out_loss, "loss_rel_diff": rel, "logits_max_abs_diff": diff,
            "rtol": rtol, "match": bool(rel <= rtol)}


def run_bench(cfg, argv: Sequence[str] = ()) -> dict[str, Any]:
    """Build, time and measure every variant; returns the bench.json record."""
    import warnings

    from peftds.train.setup import quiet_libraries

    quiet_libraries(load_bars=False)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    bc = cfg.bench
    device = resolve_device(bc.get("device"))
    bf16 = use_bf16(bc.get("bf16"), device)
    steps, warmup = int(bc.steps), int(bc.warmup)
    if steps < 1 or warmup < 0:
        raise PeftdsError(f"bench.steps must be >= 1 and bench.warmup >= 0 (got {steps}, {warmup})")
    with cpu_threads(bc.get("threads") if device.type == "cpu" else None), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notes from peft / transformers
        return _run_bench(cfg, argv, bc, device, bf16, steps, warmup, load_before)


def _run_bench(cfg, argv, bc, device, bf16, steps, warmup, load_before) -> dict[str, Any]:
    t_start = time.time()
    torch.manual_seed(int(bc.seed))
    variants, info = build_variants(cfg, argv, device)
    by_name = {v.name: v for v in variants}
    seq2seq = info["seq2seq"]
    batch = random_batch(variants[0].model, seq2seq, int(bc.batch_size), int(bc.source_len), int(bc.target_len),
                         int(bc.seed))
    batch = {k: v.to(device) for k, v in batch.items()}

    compile_info: dict[str, Any] | None = None
    if bc.get("compile"):
        compile_info = {"mode": bc.get("compile_mode"), "variants": {}}
        for name in plain(bc.get("compile_variants")) or ["design"]:
            src = by_name.get(name)
            if src is None or not src.train:
                raise PeftdsError(f"bench.compile_variants: '{name}' is not a timed training variant here")
            compiled = CompiledModel(src.call, mode=bc.get("compile_mode"))
            entry: dict[str, Any] = {}
            if bc.get("check_outputs", True):
                t0 = time.time()
                entry["outputs"] = _outputs_check(src, compiled, batch, device, bf16)
                entry["check_compile_s"] = time.time() - t0
            cv = Variant(f"{name}_compiled", f"{src.label} (compiled)", src.model, compiled, src.opt,
                         src.trainable, src.head, compiled=True)
            before = compiled.counter.delta()
            t0 = time.time()
            cv.step(batch, device, bf16)  # compiles forward and backward
            entry["compile_s"] = time.time() - t0
            after = compiled.counter.delta()
            entry["compile_counts"] = {k: after[k] - before[k] for k in after}
            t0 = time.time()
            cv.step(batch, device, bf16)  # the same shape again must not compile again
            entry["second_step_s"] = time.time() - t0
            entry["_compiled"] = compiled
            compile_info["variants"][cv.name] = entry
            if compiled.fallback:
                entry["dropped"] = compiled.fallback
                continue
            variants.append(cv)

    # ---- timing: interleaved rounds, order rotated each round
    for r in range(warmup + steps):
        k = r % len(variants)
        for v in variants[k:] + variants[:k]:
            dt = v.step(batch, device, bf16)
            if r >= warmup:
                v.times.append(dt)
    if compile_info:
        for name, entry in compile_info["variants"].items():
            compiled = entry.pop("_compiled")
            entry["stats"] = compiled.stats()
            entry["recompiles"] = compiled.recompiles

    # ---- memory: one more step per variant
    probe = MemoryProbe(device)
    if bc.get("memory", True):
        for v in variants:
            before = probe.begin()
            v.step(batch, device, bf16)
            v.step_mem = probe.end(before)
            v.resident = resident_bytes(v.model, v.opt)

    rec = _record(cfg, argv, device, bf16, variants, info, compile_info, probe, time.time() - t_start)
    rec["load_avg_before"] = load_before
    rec["cpu_count"] = os.cpu_count()
    return rec


def _record(cfg, argv, device, bf16, variants, info, compile_info, probe, wall) -> dict[str, Any]:
    import importlib.metadata as md

    bc = cfg.bench
    n_backbone = info["backbone_params"]
    vs: dict[str, Any] = {}
    for v in variants:
        peak = None if v.step_mem is None else (v.step_mem + (v.resident or 0)) / 2**20
        vs[v.name] = {
            "label": v.label, "trainable_params": v.trainable, "head_params": v.head,
            "trainable_pct": 100.0 * v.trainable / n_backbone, "compiled": v.compiled,
            "median_ms": 1000 * _median(v.times), "p10_ms": 1000 * _quantile(v.times, 0.1),
            "p90_ms": 1000 * _quantile(v.times, 0.9), "times_ms": [1000 * t for t in v.times],
            "peak_mem_mb": peak,
            "step_mem_mb": None if v.step_mem is None else v.step_mem / 2**20,
            "resident_mb": None if v.resident is None else v.resident / 2**20,
            "last_loss": v.loss,
        }

    def ratio(a: str, b: str) -> float | None:
        if a in vs and b in vs and vs[b]["median_ms"] > 0:
            return vs[a]["median_ms"] / vs[b]["median_ms"]
        return None

    ratios: dict[str, float | None] = {}
    for name in vs:
        if name.startswith("design"):
            for base in ("floor", "peft_lora", "full"):
                r = ratio(name, base)
                if r is not None:
                    ratios[f"{name}/{base}"] = r
    for a, b in (("peft_lora", "floor"), ("full", "floor"), ("forward", "floor"), ("design_compiled", "design")):
        r = ratio(a, b)
        if r is not None:
            ratios[f"{a}/{b}"] = r
    versions = {}
    for pkg in ("torch", "transformers", "peft"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "model": _model_name(argv),
        "design": cfg.design.get("name"),
        "device": str(device), "device_name": dev_name, "dtype": "bf16-autocast" if bf16 else "fp32",
        "threads": torch.get_num_threads(), "versions": versions,
        "batch_size": int(bc.batch_size), "source_len": int(bc.source_len), "target_len": int(bc.target_len),
        "steps": int(bc.steps), "warmup": int(bc.warmup), "seed": int(bc.seed), "lr": float(bc.lr),
        "backbone_params": n_backbone, "budget_params": info["budget_params"], "budget_fraction": info["budget_fraction"],
        "family": info["family"], "seq2seq": info["seq2seq"],
        "designs": info["designs"], "peft_lora": info.get("peft_lora"), "floor_norm": info.get("floor_norm"),
        "errors": info.get("errors", {}), "filled_config": info.get("filled_config", {}),
        "variants": vs, "ratios": ratios, "compile": compile_info,
        "memory_kind": probe.kind, "process_peak_rss_mb": process_peak_rss_mb(),
        "build_s": info["build_s"], "wall_s": wall,
    }


def _fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def table(rec: Mapping[str, Any]) -> str:
    """The human-readable bench table."""
    floor = rec["variants"].get("floor", {}).get("median_ms")
    head = (f"peftds bench  model {rec['model']}  design {rec['design']}  {rec['device_name']} {rec['dtype']} "
            f"threads {rec['threads']}  batch {rec['batch_size']}  source {rec['source_len']}  target "
            f"{rec['target_len']}  median of {rec['steps']} steps ({rec['warmup']} warm-up, interleaved)")
    rows = [head, "",
            f"{'variant':<34} {'trainable':>12} {'% bb':>7} {'ms/step':>9} {'p10-p90 ms':>15} {'peak MB':>9} {'vs floor':>9}"]
    for name, v in rec["variants"].items():
        vsf = v["median_ms"] / floor if floor else None
        mem = "-" if v["peak_mem_mb"] is None else f"{v['peak_mem_mb']:.0f}"
        rows.append(f"{v['label'][:34]:<34} {v['trainable_params']:>12,} {v['trainable_pct']:>6.2f}% "
                    f"{v['median_ms']:>9.1f} {v['p10_ms']:>7.1f}-{v['p90_ms']:<7.1f} {mem:>9} {_fmt_ratio(vsf):>9}")
    rows.append("")
    rs = rec["ratios"]
    keys = [k for k in rs if k.startswith("design") and (k.endswith("/floor") or k.endswith("/peft_lora"))]
    rows.append("ratios  " + "  ".join(f"{k} {_fmt_ratio(rs[k])}" for k in keys))
    pl = rec.get("peft_lora")
    budget = rec["budget_params"]
    parts = [f"budget {budget:,} ({100 * rec['budget_fraction']:.2g}% of {rec['backbone_params']:,})"]
    for name, d in rec["designs"].items():
        parts.append(f"{name} {d['trainable_params']:,} ({100 * d['trainable_params'] / max(budget, 1):.1f}%)")
    if pl:
        if pl.get("skipped"):
            parts.append(f"peft LoRA skipped: {pl['skipped']}")
        else:
            parts.append(f"peft LoRA {','.join(pl['targets'])} r={pl['rank']} {pl['params']:,} "
                         f"({100 * pl['params'] / max(budget, 1):.1f}%; r={pl['rank'] + 1} would be "
                         f"{pl['next_rank_params']:,})")
    rows.append("; ".join(parts))
    comp = rec.get("compile")
    if comp:
        for name, e in comp["variants"].items():
            c = e["compile_counts"]
            line = (f"{name}: compile {e['compile_s']:.1f}s, {c['frames']} frame(s), {c['graphs']} graph(s), "
                    f"{c['graph_breaks']} graph break(s), recompiles {e['recompiles']}")
            if e.get("dropped"):
                line += f"; NOT TIMED: {e['dropped']}"
            if "outputs" in e:
                o = e["outputs"]
                line += (f"; eval outputs vs eager: loss rel diff {o['loss_rel_diff']:.2e}, logits max abs diff "
                         f"{o['logits_max_abs_diff']:.2e} ({'match' if o['match'] else 'MISMATCH'} at rtol {o['rtol']:g})")
            rows.append(line)
            base = name[: -len("_compiled")]
            fl = rec["ratios"].get(f"{base}_compiled/floor") if base == "design" else None
            if fl is not None:
                rows.append(f"compiled design / eager floor {_fmt_ratio(fl)}   compiled / eager design "
                            f"{_fmt_ratio(rec['ratios'].get('design_compiled/design'))}")
    if rec.get("filled_config"):
        rows.append("shape-only config completed with " + ", ".join(f"{k}={v}" for k, v in rec["filled_config"].items()))
    for name, err in (rec.get("errors") or {}).items():
        rows.append(f"{name}: NOT TIMED, it failed to build: {err}")
    if rec.get("floor_norm"):
        rows.append(f"floor = frozen backbone, only {rec['floor_norm']} trainable"
                    + (" (+ task head)" if not rec["seq2seq"] else ""))
    load = rec.get("load_avg_before")
    if rec["device"] == "cpu" and load is not None and load > 0.5 * (rec.get("cpu_count") or 1):
        rows.append(f"note: the machine was busy before the run (load average {load:.1f} on {rec.get('cpu_count')} "
                    f"cores): timings are noisy; more bench.steps make them steadier"
                    + ("" if rec["threads"] == 1 else ", and bench.threads=1 avoids stalled OpenMP workers"))
    mk = rec["memory_kind"]
    rows.append(f"peak MB = own tensors (weights, buffers, optimizer state) + one step's peak above them "
                f"[{mk}]; process peak RSS {rec['process_peak_rss_mb']:.0f} MB; wall {rec['wall_s']:.0f}s")
    return "\n".join(rows)


def _out_path(setting: Any, stem: str) -> Path:
    if setting:
        return Path(str(setting))
    return Path("outputs") / stem / time.strftime("%Y-%m-%d_%H-%M-%S") / f"{stem}.json"


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


# ============================================================================ bench-data
def _data_cfg_full(cfg) -> dict[str, Any]:
    d = dict(plain(cfg.data) or {})
    d.update({"heldout": 0, "max_train_samples": None})
    return d


def _task(name: str):
    from peftds.data.tasks import load_task

    return load_task(name)


def _encoded_train(task, tokenizer, cfg, seq2seq: bool, max_len: int):
    from peftds.data.loading import encode, load_splits

    splits = load_splits(task, _data_cfg_full(cfg))
    return encode(task, tokenizer, splits["train"], "seq2seq" if seq2seq else "encoder", max_len,
                  task.max_target_len)


def padding_figures(lengths: Sequence[int], batch_size: int, max_len: int, seed: int = 0,
                    mega_batches: int | None = None) -> dict[str, Any]:
    """Processed / real tokens of one epoch for fixed padding, random batches and length-grouped batches."""
    from peftds.data.batching import DEFAULT_MEGA_BATCHES, LengthGroupedBatchSampler, batch_mate_overlap, padded_tokens, random_batches

    lengths = [int(x) for x in lengths]
    n, real = len(lengths), sum(lengths)
    rnd = [random_batches(n, batch_size, seed, e) for e in (0, 1)]
    mega = mega_batches if mega_batches is not None else DEFAULT_MEGA_BATCHES
    whole = LengthGroupedBatchSampler(lengths, batch_size, seed=seed, mega_batches=None)
    grouped = LengthGroupedBatchSampler(lengths, batch_size, seed=seed, mega_batches=mega)
    w = [whole.batches(e) for e in (0, 1)]
    g = [grouped.batches(e) for e in (0, 1)]
    once = all(sorted(i for b in bs for i in b) == list(range(n)) for bs in (*w, *g))
    return {
        "examples": n, "real_tokens": real, "batch_size": batch_size, "max_len": max_len,
        "fixed": n * max_len / real,
        "random_dynamic": padded_tokens(lengths, rnd[0]) / real,
        "grouped_whole_sort": padded_tokens(lengths, w[0]) / real,
        "grouped": padded_tokens(lengths, g[0]) / real,
        "mega_batches": mega,
        "batch_mate_overlap": {"random_dynamic": batch_mate_overlap(*rnd), "grouped_whole_sort": batch_mate_overlap(*w),
                               "grouped": batch_mate_overlap(*g)},
        "every_example_once": once,
        "batches_differ_between_epochs": g[0] != g[1],
    }


def epoch_timing(cfg, task, encoded, seq2seq: bool, sample: int, batch_size: int, max_len: int, seed: int,
                 device: torch.device, bf16: bool) -> dict[str, Any]:
    """Train one epoch over a sample of ``encoded`` with each batching scheme; wall time of the steps."""
    import numpy as np

    from peftds.design.apply import build
    from peftds.data.batching import Collator, LengthGroupedBatchSampler, random_batches

    n = min(int(sample), len(encoded))
    idx = np.sort(np.random.default_rng([seed, 7]).permutation(len(encoded))[:n])
    rows = [encoded[int(i)] for i in idx]
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids", "labels") if k in rows[0]]
    rows = [{k: r[k] for k in keys} for r in rows]
    lengths = [len(r["input_ids"]) for r in rows]
    num_labels = None if seq2seq else task.num_labels
    torch.manual_seed(seed)
    built = build(cfg.model, cfg.design, float(cfg.budget.fraction), num_labels=num_labels, seed=int(cfg.seed))
    model = built.model.to(device).train()
    opt = make_optimizer(_trainable(model), float(cfg.bench.lr), device)
    pad_id = getattr(model.config, "pad_token_id", 0) or 0
    schemes = {
        "fixed": (random_batches(n, batch_size, seed), Collator(pad_id, seq2seq, buckets=[max_len])),
        "random_dynamic": (random_batches(n, batch_size, seed), Collator(pad_id, seq2seq)),
        "grouped": (LengthGroupedBatchSampler(lengths, batch_size, seed=seed).batches(0), Collator(pad_id, seq2seq)),
    }

    def step(b):
        b = {k: v.to(device) for k, v in b.items()}
        with autocast_for(device, bf16):
            loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    warm = schemes["random_dynamic"][1]([rows[i] for i in schemes["random_dynamic"][0][0]])
    for _ in range(2):
        step(warm)
    out: dict[str, Any] = {"examples": n, "real_tokens": sum(lengths), "design": built.plan.design}
    spent = {name: 0.0 for name in schemes}
    tokens = {name: 0 for name in schemes}
    # Interleaved: batch k of every scheme, then batch k+1, ... so a busy phase of the machine hits all alike.
    for k in range(max(len(b) for b, _ in schemes.values())):
        for name, (batches, collate) in schemes.items():
            if k >= len(batches):
                continue
            sync(device)
            t0 = time.perf_counter()
            coll = collate([rows[i] for i in batches[k]])  # collation is part of an epoch's cost
            tokens[name] += coll["input_ids"].numel()
            step(coll)
            sync(device)
            spent[name] += time.perf_counter() - t0
    for name in schemes:
        out[name] = {"epoch_s": spent[name], "processed_tokens": tokens[name],
                     "tokens_ratio": tokens[name] / out["real_tokens"], "real_tokens_per_s": out["real_tokens"] / spent[name]}
    out["speedup_grouped_vs_fixed"] = out["fixed"]["epoch_s"] / out["grouped"]["epoch_s"]
    out["speedup_grouped_vs_random"] = out["random_dynamic"]["epoch_s"] / out["grouped"]["epoch_s"]
    return out


def run_bench_data(cfg, argv: Sequence[str] = ()) -> dict[str, Any]:
    from peftds.model.backbones import hf_config, model_kind
    from peftds.train.setup import load_tokenizer, quiet_libraries

    quiet_libraries(load_bars=False)
    dc = cfg.bench.data
    hf_cfg, _ = hf_config(cfg.model, allow_fallback=False)
    seq2seq = model_kind(hf_cfg.model_type) == "seq2seq"
    tokenizer = load_tokenizer(cfg.model, seq2seq)
    device = resolve_device(cfg.bench.get("device"))
    bf16 = use_bf16(cfg.bench.get("bf16"), device)
    seed = int(dc.get("seed", 0))
    bs = int(dc.batch_size)
    rec: dict[str, Any] = {"model": _model_name(argv), "tokenizer": cfg.model.get("tokenizer") or cfg.model.get("name_or_path"),
                           "design": cfg.design.get("name"), "device": str(device), "tasks": {}}
    time_tasks = set(plain(dc.get("time_tasks")) or [])
    for name in plain(dc.tasks):
        task = _task(name)
        max_len = int(dc.get("max_len") or task.max_source_len)
        t0 = time.time()
        enc = _encoded_train(task, tokenizer, cfg, seq2seq, max_len)
        entry = padding_figures(enc["length"], bs, max_len, seed, dc.get("mega_batches"))
        entry["tokenize_s"] = time.time() - t0
        if name in time_tasks and int(dc.get("time_samples") or 0) > 0:
            with cpu_threads(cfg.bench.get("threads") if device.type == "cpu" else None):
                entry["timing"] = epoch_timing(cfg, task, enc, seq2seq, int(dc.time_samples), bs, max_len, seed,
                                               device, bf16)
        rec["tasks"][name] = entry
    return rec


def data_table(rec: Mapping[str, Any]) -> str:
    rows = [f"peftds bench-data  tokenizer {rec['tokenizer']}  (processed tokens / real tokens, one epoch)", "",
            f"{'task':<6} {'examples':>9} {'batch':>5} {'fixed':>7} {'random':>7} {'sorted':>7} {'grouped':>8} "
            f"{'mates kept (random/sorted/grouped)':>36}"]
    for name, e in rec["tasks"].items():
        o = e["batch_mate_overlap"]
        rows.append(f"{name:<6} {e['examples']:>9,} {e['batch_size']:>5} {e['fixed']:>6.2f}x {e['random_dynamic']:>6.2f}x "
                    f"{e['grouped_whole_sort']:>6.2f}x {e['grouped']:>7.2f}x "
                    f"{o['random_dynamic']:>14.1%} / {o['grouped_whole_sort']:.1%} / {o['grouped']:.1%}")
    rows.append(f"fixed: every batch padded to max_len; random: shuffled batches padded to their longest; sorted: "
                f"whole-set length sort; grouped: the training sampler (mega-batches of "
                f"{next(iter(rec['tasks'].values()))['mega_batches'] if rec['tasks'] else '?'} batches). "
                f"'mates kept': share of an example's batch-mates that are batch-mates again next epoch.")
    timed = {k: e["timing"] for k, e in rec["tasks"].items() if "timing" in e}
    if timed:
        rows += ["", f"epoch time on a sample, design {rec['design']} on {rec['model']} ({rec['device']}):",
                 f"{'task':<6} {'examples':>8} {'fixed s':>8} {'random s':>9} {'grouped s':>10} {'tokens f/r/g':>20} "
                 f"{'speed-up vs fixed':>18}"]
        for name, t in timed.items():
            toks = f"{t['fixed']['tokens_ratio']:.2f}/{t['random_dynamic']['tokens_ratio']:.2f}/{t['grouped']['tokens_ratio']:.2f}"
            rows.append(f"{name:<6} {t['examples']:>8} {t['fixed']['epoch_s']:>8.1f} {t['random_dynamic']['epoch_s']:>9.1f} "
                        f"{t['grouped']['epoch_s']:>10.1f} {toks:>20} {t['speedup_grouped_vs_fixed']:>17.2f}x")
    return "\n".join(rows)


# ============================================================================ bench-eval
def quick_train(model, rows, seq2seq: bool, steps: int, batch_size: int, lr: float, seed: int, pad_id: int) -> float:
    """A few full fine-tuning steps (so a random-init text-to-text model emits label words)."""
    from peftds.data.batching import Collator, LengthGroupedBatchSampler

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sampler = LengthGroupedBatchSampler([len(r["input_ids"]) for r in rows], batch_size, seed=seed)
    collate = Collator(pad_id, seq2seq)
    done, loss = 0, float("nan")
    while done < steps:
        for b in sampler:
            batch = collate([rows[i] for i in b])
            out = model(**batch)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss = float(out.loss.detach())
            done += 1
            if done >= steps:
                break
    model.eval()
    return loss


def run_bench_eval(cfg, argv: Sequence[str] = ()) -> dict[str, Any]:
    """Label-word ranking vs free (greedy) generation on a text-to-text classification task."""
    import numpy as np

    from peftds.design.apply import load_trained
    from peftds.model.backbones import hf_config, build_model, model_kind
    from peftds.data.batching import Collator
    from peftds.data.loading import encode, label_word_ids, load_splits
    from peftds.data.tasks import Task, rank_labels
    from peftds.train.setup import load_tokenizer, quiet_libraries

    quiet_libraries(load_bars=False)
    ec = cfg.bench.eval
    task = Task.from_config(cfg.task)
    if task.kind != "classification":
        raise PeftdsError(f"bench-eval compares ranking and generation on classification tasks ('{task.name}' is {task.kind})")
    hf_cfg, _ = hf_config(cfg.model, allow_fallback=False)
    if model_kind(hf_cfg.model_type) != "seq2seq":
        raise PeftdsError("bench-eval needs a text-to-text model (T5, BART), e.g. model=tiny_t5")
    tokenizer = load_tokenizer(cfg.model, True)
    splits = load_splits(task, plain(cfg.data))
    src_len, tgt_len = task.max_source_len, task.max_target_len
    evals = splits["validation"]
    if ec.get("samples") and len(evals) > int(ec.samples):
        evals = evals.select(range(int(ec.samples)))
    enc = encode(task, tokenizer, evals, "seq2seq", src_len, tgt_len)
    refs = [int(x) for x in evals[task.label_column]]
    seed = int(cfg.seed)
    train_loss = None
    if ec.get("run"):
        model = load_trained(str(ec.run), cfg.model).model
        source = f"trained design from {ec.run}"
    else:
        torch.manual_seed(seed)
        model = build_model(cfg.model)
        source = "backbone as built"
        if int(ec.get("train_steps") or 0) > 0:
            train = splits["train"]
            n = min(len(train), int(ec.train_steps) * int(ec.train_batch_size))
            train = train.select(range(n))
            tr = encode(task, tokenizer, train, "seq2seq", src_len, tgt_len)
            rows = [{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in tr]
            train_loss = quick_train(model, rows, True, int(ec.train_steps), int(ec.train_batch_size),
                                     float(ec.train_lr), seed, tokenizer.pad_token_id)
            source = f"backbone + {int(ec.train_steps)} full fine-tuning steps (loss {train_loss:.3f})"
    model.eval()
    cands = label_word_ids(task, tokenizer)
    collate = Collator(tokenizer.pad_token_id, True)
    order = sorted(range(len(enc)), key=lambda i: enc[i]["length"])
    bs = int(ec.batch_size)
    batches = [order[s : s + bs] for s in range(0, len(order), bs)]
    coll = [collate([{k: enc[i][k] for k in ("input_ids", "attention_mask")} for i in b]) for b in batches]
    n = len(order)

    def timed(fn) -> tuple[list[Any], float]:
        preds: list[Any] = [None] * n
        with torch.no_grad():
            fn(coll[0])  # warm-up (one batch)
            t0 = time.perf_counter()
            for b, c in zip(batches, coll):
                for i, p in zip(b, fn(c)):
                    preds[i] = p
            return preds, time.perf_counter() - t0

    def rank(c):
        return rank_labels(model, c["input_ids"], c["attention_mask"], cands).tolist()

    def generate(c):
        gen = model.generate(**c, num_beams=1, do_sample=False, max_new_tokens=tgt_len)
        return [task.decode(t) for t in tokenizer.batch_decode(gen, skip_special_tokens=True)]

    rank_preds, rank_s = timed(rank)
    gen_preds, gen_s = timed(generate)
    valid = [i for i in range(n) if gen_preds[i] != -1]
    same = [i for i in valid if gen_preds[i] == rank_preds[i]]
    acc = lambda preds: float(np.mean([p == r for p, r in zip(preds, refs)])) if refs else float("nan")  # noqa: E731
    return {
        "model": _model_name(argv, "tiny_t5"), "task": task.name, "examples": n, "batch_size": bs,
        "weights": source, "train_loss": train_loss, "label_words": list(task.label_words),
        "rank": {"seconds": rank_s, "examples_per_s": n / rank_s, "accuracy": acc(rank_preds)},
        "generate": {"seconds": gen_s, "examples_per_s": n / gen_s, "accuracy": acc(gen_preds),
                     "max_new_tokens": tgt_len, "valid": len(valid)},
        "speedup_rank_vs_generate": gen_s / rank_s,
        "distinct_predictions": {"rank": len(set(rank_preds)), "generate": len(set(gen_preds))},
        "valid_generations": len(valid), "identical_where_valid": len(same),
        "all_identical_where_valid": len(same) == len(valid),
        "mismatches": [{"index": i, "rank": rank_preds[i], "generate": gen_preds[i]} for i in valid if i not in set(same)][:10],
    }


def eval_table(rec: Mapping[str, Any]) -> str:
    r, g = rec["rank"], rec["generate"]
    return "\n".join([
        f"peftds bench-eval  model {rec['model']}  task {rec['task']}  {rec['examples']} dev examples, batch "
        f"{rec['batch_size']}  ({rec['weights']})",
        f"label-word ranking   {r['examples_per_s']:>9.1f} examples/s  accuracy {r['accuracy']:.3f}",
        f"greedy generation    {g['examples_per_s']:>9.1f} examples/s  accuracy {g['accuracy']:.3f}  "
        f"(max_new_tokens {g['max_new_tokens']}; valid label word in {g['valid']}/{rec['examples']})",
        f"ranking is {rec['speedup_rank_vs_generate']:.2f}x faster; identical predictions where generation is "
        f"valid: {rec['identical_where_valid']}/{rec['valid_generations']} (classes predicted: "
        f"{rec['distinct_predictions']['rank']} by ranking, {rec['distinct_predictions']['generate']} by generation)",
    ])


# ============================================================================ commands
def _compose(argv: Sequence[str]):
    from peftds.config.compose import compose

    return compose(list(argv))


def cmd_bench(argv: list[str]) -> int:
    cfg = _compose(argv)
    rec = run_bench(cfg, argv)
    if cfg.bench.get("epoch"):
        rec["epoch"] = run_bench_data(cfg, argv)
    path = _out_path(cfg.bench.get("out"), "bench")
    rec["out"] = str(path)
    write_json(path, rec)
    print(table(rec))
    if rec.get("epoch"):
        print()
        print(data_table(rec["epoch"]))
    print(f"-> {path}")
    return 0


def cmd_bench_data(argv: list[str]) -> int:
    cfg = _compose(argv)
    rec = run_bench_data(cfg, argv)
    path = _out_path(cfg.bench.get("out"), "bench_data")
    rec["out"] = str(path)
    write_json(path, rec)
    print(data_table(rec))
    print(f"-> {path}")
    return 0


def cmd_bench_eval(argv: list[str]) -> int:
    argv = list(argv)
    if not any(a.startswith("model=") for a in argv):
        argv.insert(0, "model=tiny_t5")
    cfg = _compose(argv)
    with cpu_threads(cfg.bench.get("threads")):  # bench-eval runs on the CPU
        rec = run_bench_eval(cfg, argv)
    path = _out_path(cfg.bench.get("out"), "bench_eval")
    rec["out"] = str(path)
    write_json(path, rec)
    print(eval_table(rec))
    print(f"-> {path}")
    return 0


def merge_tables(paths: Sequence[str]) -> str:
    """One table over several bench.json files (scripts/gpu_bench.sh)."""
    rows = []
    for p in paths:
        rec = json.loads(Path(p).read_text())
        rows.append(f"[{Path(p).stem}] model {rec['model']}  {rec['device_name']} {rec['dtype']}  batch {rec['batch_size']} "
                    f"source {rec['source_len']} target {rec['target_len']}  median of {rec['steps']} steps")
        rows.append(f"  {'variant':<34} {'trainable':>11} {'ms/step':>9} {'peak MB':>9} {'/floor':>7} {'/peft LoRA':>10}")
        vs = rec["variants"]
        floor = vs.get("floor", {}).get("median_ms")
        peft = vs.get("peft_lora", {}).get("median_ms")
        for name, v in vs.items():
            mem = "-" if v.get("peak_mem_mb") is None else f"{v['peak_mem_mb']:.0f}"
            rf = _fmt_ratio(v["median_ms"] / floor if floor else None)
            rp = _fmt_ratio(v["median_ms"] / peft if peft else None)
            rows.append(f"  {v['label'][:34]:<34} {v['trainable_params']:>11,} {v['median_ms']:>9.1f} {mem:>9} {rf:>7} {rp:>10}")
        comp = rec.get("compile") or {}
        for name, e in (comp.get("variants") or {}).items():
            o = e.get("outputs") or {}
            rows.append(f"  {name}: compile {e['compile_s']:.0f}s, recompiles {e['recompiles']}, eval loss rel "
                        f"diff vs eager {o.get('loss_rel_diff', float('nan')):.1e}"
                        + (" - NOT TIMED (recompiles every step)" if e.get("dropped") else ""))
        rc = rec["ratios"]
        if "design_compiled/floor" in rc:
            rows.append(f"  compiled design / eager floor {_fmt_ratio(rc['design_compiled/floor'])}, compiled / eager "
                        f"design {_fmt_ratio(rc.get('design_compiled/design'))}")
        rows.append("")
    return "\n".join(rows)


CLI_COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "bench": cmd_bench,
    "bench-data": cmd_bench_data,
    "bench-eval": cmd_bench_eval,
}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m peftds.bench.step <bench|bench-data|bench-eval> key=value ...`` (the CLI commands without
    importing the other command modules) or ``python -m peftds.bench.step --table A.json B.json ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--table":
        print(merge_tables(argv[1:]))
        return 0
    if not argv or argv[0] not in CLI_COMMANDS:
        print(f"usage: python -m peftds.bench.step {{{'|'.join(CLI_COMMANDS)}}} key=value ... | --table BENCH.json ...",
              file=sys.stderr)
        return 2
    try:
        return CLI_COMMANDS[argv[0]](argv[1:])
    except PeftdsError as e:
        print(f"peftds: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
