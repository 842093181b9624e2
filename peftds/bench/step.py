"""`peftds bench`: the median training step of each variant (peftds.bench.variants), its memory, the
ratios between them, and the bench table.

In one process and on the same random batch, the median training step (forward + backward + AdamW step)
of

* ``design``     the design as peftds builds it (``design=``; more with ``bench.designs=[lora,prefix]``);
* ``peft_lora``  HF peft LoRA on the query and value projections (T5 ``q,v``; BART ``q_proj,v_proj``;
                 BERT/RoBERTa ``query,value``) with the largest rank whose parameter count fits the
                 design's budget (both counts reported);
* ``floor``      the frozen backbone with only its first layer norm trainable (the embedding norm where
                 the model has one): every PEFT step pays this backward through the whole stack;
* ``full``       full fine-tuning;
* ``forward``    the backbone's forward alone (train mode, no autograd);
* ``design_compiled`` (``bench.compile=true``) the design's step through ``torch.compile``
  (:class:`peftds.train.compile.CompiledModel`; a compiled variant that falls back to eager is reported
  as not timed).

All variants start from the same backbone weights (one random-init or pretrained build, deep-copied).
Steps are interleaved round by round (variant order rotated each round), so a slow phase of a shared
machine hits every variant alike; the reported figure is the median of ``bench.steps`` timed rounds
after ``bench.warmup`` untimed ones. Encoder-only models train their task head in every variant
(head counted apart). On a GPU steps run under bf16 autocast (``bench.bf16=auto``) with
``torch.cuda.synchronize`` around each step.

Memory: after timing, one more step per variant measures the step's peak above what was allocated
before it (peftds.bench.memory), and the reported peak is that plus the variant's own resident tensors
(weights, buffers, optimizer state): the memory the variant would need alone. ``process_peak_rss_mb`` is
the whole process's peak RSS. CPU: timing runs with ``bench.threads`` torch threads (default 1, see
:class:`peftds.bench.device.cpu_threads`).
"""

from __future__ import annotations

import math
import os
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from peftds.bench.device import autocast_for, cpu_threads, resolve_device, use_bf16
from peftds.bench.memory import MemoryProbe, process_peak_rss_mb, resident_bytes
from peftds.bench.settings import model_name
from peftds.bench.variants import Variant, build_variants, random_batch
from peftds.config.sections import BenchConfig
from peftds.errors import PeftdsError
from peftds.files import versions
from peftds.run_config import RunConfig
from peftds.train.compile import CompiledModel
from peftds.train.setup import quiet_libraries

# Compiled vs eager loss: relative tolerance (fp32 / bf16 autocast).
COMPILE_RTOL = {"fp32": 1e-4, "bf16": 2e-2}


def median(xs: Sequence[float]) -> float:
    """The median (nan when empty)."""
    return float(statistics.median(xs)) if xs else float("nan")


def quantile(xs: Sequence[float], q: float) -> float:
    """The ``q`` quantile, linearly interpolated (nan when empty)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))


def fmt_ratio(r: float | None) -> str:
    """``1.23x``, or ``-`` where there is no ratio."""
    return "-" if r is None else f"{r:.2f}x"


def outputs_check(
    v: Variant, compiled: Callable[..., Any], batch: Mapping[str, torch.Tensor], device: torch.device, bf16: bool
) -> dict[str, Any]:
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
    return {
        "eager_loss": ref_loss,
        "compiled_loss": out_loss,
        "loss_rel_diff": rel,
        "logits_max_abs_diff": diff,
        "rtol": rtol,
        "match": bool(rel <= rtol),
    }


def run_bench(
    run: RunConfig, bench: BenchConfig, extra_designs: Mapping[str, Mapping[str, Any] | str] | None = None
) -> dict[str, Any]:
    """Build, time and measure every variant; returns the bench.json record."""
    quiet_libraries(load_bars=False)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    device = resolve_device(bench.device)
    bf16 = use_bf16(bench.bf16, device)
    with cpu_threads(bench.threads if device.type == "cpu" else None), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notes from peft / transformers
        rec = time_variants(run, bench, extra_designs or {}, device, bf16)
    rec["load_avg_before"] = load_before
    rec["cpu_count"] = os.cpu_count()
    return rec


def compile_variants(
    bench: BenchConfig, variants: list[Variant], batch: Mapping[str, torch.Tensor], device: torch.device, bf16: bool
) -> tuple[dict[str, Any], dict[str, CompiledModel]]:
    """Add the compiled twin of each of ``bench.compile_variants`` to ``variants`` (compiled and checked
    here, two steps); returns the compile record and the compiled models (their stats come after timing)."""
    by_name = {v.name: v for v in variants}
    info: dict[str, Any] = {"mode": bench.compile_mode, "variants": {}}
    models: dict[str, CompiledModel] = {}
    for name in bench.compile_variants:
        src = by_name.get(name)
        if src is None or not src.train:
            raise PeftdsError(f"bench.compile_variants: '{name}' is not a timed training variant here")
        compiled = CompiledModel(src.call, mode=bench.compile_mode)
        entry: dict[str, Any] = {}
        if bench.check_outputs:
            t0 = time.time()
            entry["outputs"] = outputs_check(src, compiled, batch, device, bf16)
            entry["check_compile_s"] = time.time() - t0
        cv = Variant(
            f"{name}_compiled",
            f"{src.label} (compiled)",
            src.model,
            compiled,
            src.opt,
            src.trainable,
            src.head,
            compiled=True,
        )
        before = compiled.counter.delta()
        t0 = time.time()
        cv.step(batch, device, bf16)  # compiles forward and backward
        entry["compile_s"] = time.time() - t0
        after = compiled.counter.delta()
        entry["compile_counts"] = {k: after[k] - before[k] for k in after}
        t0 = time.time()
        cv.step(batch, device, bf16)  # the same shape again must not compile again
        entry["second_step_s"] = time.time() - t0
        info["variants"][cv.name] = entry
        models[cv.name] = compiled
        if compiled.fallback:
            entry["dropped"] = compiled.fallback
            continue
        variants.append(cv)
    return info, models


def time_variants(
    run: RunConfig,
    bench: BenchConfig,
    extra_designs: Mapping[str, Mapping[str, Any] | str],
    device: torch.device,
    bf16: bool,
) -> dict[str, Any]:
    """Build the variants, time them in interleaved rounds, measure their memory; the record."""
    t_start = time.time()
    torch.manual_seed(bench.seed)
    variants, info = build_variants(run, bench, extra_designs, device)
    batch = random_batch(
        variants[0].model, info["seq2seq"], bench.batch_size, bench.source_len, bench.target_len, bench.seed
    )
    batch = {k: v.to(device) for k, v in batch.items()}

    compile_info, compiled = compile_variants(bench, variants, batch, device, bf16) if bench.compile else (None, {})

    # Interleaved rounds, order rotated each round: a slow phase of the machine hits every variant alike.
    for r in range(bench.warmup + bench.steps):
        k = r % len(variants)
        for v in variants[k:] + variants[:k]:
            dt = v.step(batch, device, bf16)
            if r >= bench.warmup:
                v.times.append(dt)
    if compile_info:
        for name, model in compiled.items():
            compile_info["variants"][name]["stats"] = model.stats()
            compile_info["variants"][name]["recompiles"] = model.recompiles

    probe = MemoryProbe(device)
    if bench.memory:  # one more step per variant
        for v in variants:
            before = probe.begin()
            v.step(batch, device, bf16)
            v.step_mem = probe.end(before)
            v.resident = resident_bytes(v.model, v.opt)
    return record(run, bench, device, bf16, variants, info, compile_info, probe.kind, time.time() - t_start)


def ratios_of(vs: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Median-step ratios: each design to floor, peft LoRA and full FT; the baselines to the floor."""

    def ratio(a: str, b: str) -> float | None:
        if a in vs and b in vs and vs[b]["median_ms"] > 0:
            return vs[a]["median_ms"] / vs[b]["median_ms"]
        return None

    pairs = [(name, base) for name in vs if name.startswith("design") for base in ("floor", "peft_lora", "full")]
    pairs += [("peft_lora", "floor"), ("full", "floor"), ("forward", "floor"), ("design_compiled", "design")]
    out = {}
    for a, b in pairs:
        r = ratio(a, b)
        if r is not None:
            out[f"{a}/{b}"] = r
    return out


def record(
    run: RunConfig,
    bench: BenchConfig,
    device: torch.device,
    bf16: bool,
    variants: Sequence[Variant],
    info: Mapping[str, Any],
    compile_info: dict[str, Any] | None,
    memory_kind: str,
    wall: float,
) -> dict[str, Any]:
    """The bench.json record of one run."""
    n_backbone = info["backbone_params"]
    vs: dict[str, Any] = {}
    for v in variants:
        peak = None if v.step_mem is None else (v.step_mem + (v.resident or 0)) / 2**20
        vs[v.name] = {
            "label": v.label,
            "trainable_params": v.trainable,
            "head_params": v.head,
            "trainable_pct": 100.0 * v.trainable / n_backbone,
            "compiled": v.compiled,
            "median_ms": 1000 * median(v.times),
            "p10_ms": 1000 * quantile(v.times, 0.1),
            "p90_ms": 1000 * quantile(v.times, 0.9),
            "times_ms": [1000 * t for t in v.times],
            "peak_mem_mb": peak,
            "step_mem_mb": None if v.step_mem is None else v.step_mem / 2**20,
            "resident_mb": None if v.resident is None else v.resident / 2**20,
            "last_loss": v.loss,
        }
    return {
        "model": model_name(run),
        "design": run.design_config.get("name"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": "bf16-autocast" if bf16 else "fp32",
        "threads": torch.get_num_threads(),
        "versions": versions(),
        "batch_size": bench.batch_size,
        "source_len": bench.source_len,
        "target_len": bench.target_len,
        "steps": bench.steps,
        "warmup": bench.warmup,
        "seed": bench.seed,
        "lr": bench.lr,
        "backbone_params": n_backbone,
        "budget_params": info["budget_params"],
        "budget_fraction": info["budget_fraction"],
        "family": info["family"],
        "seq2seq": info["seq2seq"],
        "designs": info["designs"],
        "peft_lora": info.get("peft_lora"),
        "floor_norm": info.get("floor_norm"),
        "errors": info.get("errors", {}),
        "filled_config": info.get("filled_config", {}),
        "variants": vs,
        "ratios": ratios_of(vs),
        "compile": compile_info,
        "memory_kind": memory_kind,
        "process_peak_rss_mb": process_peak_rss_mb(),
        "build_s": info["build_s"],
        "wall_s": wall,
    }


def table(rec: Mapping[str, Any]) -> str:
    """The human-readable bench table."""
    floor = rec["variants"].get("floor", {}).get("median_ms")
    head = (
        f"peftds bench  model {rec['model']}  design {rec['design']}  {rec['device_name']} {rec['dtype']} "
        f"threads {rec['threads']}  batch {rec['batch_size']}  source {rec['source_len']}  target "
        f"{rec['target_len']}  median of {rec['steps']} steps ({rec['warmup']} warm-up, interleaved)"
    )
    rows = [
        head,
        "",
        f"{'variant':<34} {'trainable':>12} {'% bb':>7} {'ms/step':>9} {'p10-p90 ms':>15} "
        f"{'peak MB':>9} {'vs floor':>9}",
    ]
    for v in rec["variants"].values():
        vsf = v["median_ms"] / floor if floor else None
        mem = "-" if v["peak_mem_mb"] is None else f"{v['peak_mem_mb']:.0f}"
        rows.append(
            f"{v['label'][:34]:<34} {v['trainable_params']:>12,} {v['trainable_pct']:>6.2f}% "
            f"{v['median_ms']:>9.1f} {v['p10_ms']:>7.1f}-{v['p90_ms']:<7.1f} {mem:>9} {fmt_ratio(vsf):>9}"
        )
    rows.append("")
    rs = rec["ratios"]
    keys = [k for k in rs if k.startswith("design") and (k.endswith("/floor") or k.endswith("/peft_lora"))]
    rows.append("ratios  " + "  ".join(f"{k} {fmt_ratio(rs[k])}" for k in keys))
    rows.append(budget_line(rec))
    rows += compile_lines(rec)
    if rec.get("filled_config"):
        rows.append(
            "shape-only config completed with " + ", ".join(f"{k}={v}" for k, v in rec["filled_config"].items())
        )
    for name, err in (rec.get("errors") or {}).items():
        rows.append(f"{name}: NOT TIMED, it failed to build: {err}")
    if rec.get("floor_norm"):
        rows.append(
            f"floor = frozen backbone, only {rec['floor_norm']} trainable"
            + (" (+ task head)" if not rec["seq2seq"] else "")
        )
    load = rec.get("load_avg_before")
    if rec["device"] == "cpu" and load is not None and load > 0.5 * (rec.get("cpu_count") or 1):
        rows.append(
            f"note: the machine was busy before the run (load average {load:.1f} on {rec.get('cpu_count')} "
            f"cores): timings are noisy; more bench.steps make them steadier"
            + ("" if rec["threads"] == 1 else ", and bench.threads=1 avoids stalled OpenMP workers")
        )
    rows.append(
        f"peak MB = own tensors (weights, buffers, optimizer state) + one step's peak above them "
        f"[{rec['memory_kind']}]; process peak RSS {rec['process_peak_rss_mb']:.0f} MB; wall {rec['wall_s']:.0f}s"
    )
    return "\n".join(rows)


def budget_line(rec: Mapping[str, Any]) -> str:
    """The budget and what each design and peft LoRA spend of it."""
    budget = rec["budget_params"]
    parts = [f"budget {budget:,} ({100 * rec['budget_fraction']:.2g}% of {rec['backbone_params']:,})"]
    for name, d in rec["designs"].items():
        parts.append(f"{name} {d['trainable_params']:,} ({100 * d['trainable_params'] / max(budget, 1):.1f}%)")
    pl = rec.get("peft_lora")
    if pl and pl.get("skipped"):
        parts.append(f"peft LoRA skipped: {pl['skipped']}")
    elif pl:
        parts.append(
            f"peft LoRA {','.join(pl['targets'])} r={pl['rank']} {pl['params']:,} "
            f"({100 * pl['params'] / max(budget, 1):.1f}%; r={pl['rank'] + 1} would be "
            f"{pl['next_rank_params']:,})"
        )
    return "; ".join(parts)


def compile_lines(rec: Mapping[str, Any]) -> list[str]:
    """One line per compiled variant: compilations, recompiles, outputs vs eager, compiled/eager ratios."""
    rows: list[str] = []
    for name, e in ((rec.get("compile") or {}).get("variants") or {}).items():
        c = e["compile_counts"]
        line = (
            f"{name}: compile {e['compile_s']:.1f}s, {c['frames']} frame(s), {c['graphs']} graph(s), "
            f"{c['graph_breaks']} graph break(s), recompiles {e['recompiles']}"
        )
        if e.get("dropped"):
            line += f"; NOT TIMED: {e['dropped']}"
        if "outputs" in e:
            o = e["outputs"]
            line += (
                f"; eval outputs vs eager: loss rel diff {o['loss_rel_diff']:.2e}, logits max abs diff "
                f"{o['logits_max_abs_diff']:.2e} ({'match' if o['match'] else 'MISMATCH'} at rtol {o['rtol']:g})"
            )
        rows.append(line)
        fl = rec["ratios"].get("design_compiled/floor") if name == "design_compiled" else None
        if fl is not None:
            rows.append(
                f"compiled design / eager floor {fmt_ratio(fl)}   compiled / eager design "
                f"{fmt_ratio(rec['ratios'].get('design_compiled/design'))}"
            )
    return rows
