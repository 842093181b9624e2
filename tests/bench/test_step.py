"""peftds.bench.step: `peftds bench` on tiny models (records, ratios, tables), in seconds."""

import json
import math

import pytest

from peftds.cli import main

VARIANT_KEYS = {
    "label",
    "trainable_params",
    "head_params",
    "trainable_pct",
    "compiled",
    "median_ms",
    "p10_ms",
    "p90_ms",
    "times_ms",
    "peak_mem_mb",
    "step_mem_mb",
    "resident_mb",
    "last_loss",
}
TOP_KEYS = {
    "model",
    "design",
    "device",
    "device_name",
    "dtype",
    "threads",
    "versions",
    "batch_size",
    "source_len",
    "target_len",
    "steps",
    "warmup",
    "seed",
    "lr",
    "backbone_params",
    "budget_params",
    "budget_fraction",
    "family",
    "seq2seq",
    "designs",
    "peft_lora",
    "floor_norm",
    "variants",
    "ratios",
    "compile",
    "memory_kind",
    "process_peak_rss_mb",
    "build_s",
    "wall_s",
    "out",
    "load_avg_before",
    "cpu_count",
    "errors",
    "filled_config",
}
SMALL = ["bench.batch_size=2", "bench.source_len=12", "bench.target_len=4", "bench.steps=3", "bench.warmup=1"]


def run_bench(capsys, tmp_path, *argv):
    out = tmp_path / "bench.json"
    code = main(["bench", *argv, *SMALL, f"bench.out={out}"])
    printed = capsys.readouterr().out
    assert code == 0
    return json.loads(out.read_text()), printed


def check_record(rec, steps=3):
    assert set(rec) >= TOP_KEYS, TOP_KEYS - set(rec)
    assert set(rec["variants"]) == {"design", "peft_lora", "floor", "full", "forward"}
    for name, v in rec["variants"].items():
        assert set(v) >= VARIANT_KEYS, (name, VARIANT_KEYS - set(v))
        assert len(v["times_ms"]) == steps and all(t > 0 for t in v["times_ms"])
        assert math.isclose(v["median_ms"], sorted(v["times_ms"])[steps // 2])  # the median of the timed steps
        assert v["peak_mem_mb"] > 0 and v["resident_mb"] > 0
    vs = rec["variants"]
    # ratios are the ratios of the measured medians
    for key, base in (("design/floor", "floor"), ("design/peft_lora", "peft_lora"), ("design/full", "full")):
        assert math.isclose(rec["ratios"][key], vs["design"]["median_ms"] / vs[base]["median_ms"])
    assert math.isclose(rec["ratios"]["forward/floor"], vs["forward"]["median_ms"] / vs["floor"]["median_ms"])
    # trainable counts: design within its budget, floor = the first norm, full = the backbone
    budget = rec["budget_params"]
    assert 0.95 * budget <= vs["design"]["trainable_params"] <= budget
    assert vs["full"]["trainable_params"] == rec["backbone_params"]
    assert vs["forward"]["trainable_params"] == 0
    # peft LoRA spends the same budget, within one rank step
    pl = rec["peft_lora"]
    assert (
        pl["built_params"] == pl["params"] == pl["rank"] * pl["params_per_rank"] == vs["peft_lora"]["trainable_params"]
    )
    assert pl["params"] <= budget < pl["params"] + pl["params_per_rank"] == pl["next_rank_params"]
    assert rec["compile"] is None and rec["device"] == "cpu" and rec["dtype"] == "fp32"


def test_bench_tiny_t5_spindle(capsys, tmp_path):
    rec, printed = run_bench(capsys, tmp_path, "model=tiny_t5", "design=spindle_t5base")
    check_record(rec)
    assert rec["model"] == "tiny_t5" and rec["design"] == "spindle_t5base" and rec["seq2seq"]
    assert rec["peft_lora"]["targets"] == ["q", "v"]
    # q,v of 12 encoder self-attentions + 12 decoder self + 12 cross: 36 sites x 2 matrices x (64 + 128)
    assert rec["peft_lora"]["params_per_rank"] == 72 * (64 + 128)
    assert rec["floor_norm"] == "encoder.block.0.layer.0.layer_norm"
    assert rec["variants"]["floor"]["trainable_params"] == 64
    assert rec["variants"]["design"]["head_params"] == 0
    assert "design/floor" in printed and "peft LoRA q,v r=" in printed and "forward only" in printed
    assert rec["out"] in printed


def test_bench_tiny_bert_lora(capsys, tmp_path):
    rec, printed = run_bench(capsys, tmp_path, "model=tiny_bert", "design=lora")
    check_record(rec)
    assert rec["family"] == "bert" and not rec["seq2seq"]
    assert rec["peft_lora"]["targets"] == ["query", "value"]
    assert rec["floor_norm"] == "bert.embeddings.LayerNorm"
    heads = {v["head_params"] for k, v in rec["variants"].items() if k != "forward"}
    assert len(heads) == 1 and heads.pop() > 0  # every trained variant trains the same task head (counted apart)
    assert "table" not in printed and "ms/step" in printed


def test_bench_more_designs_and_variant_subset(capsys, tmp_path):
    out = tmp_path / "b.json"
    code = main(
        [
            "bench",
            "model=tiny_bert",
            "design=lora",
            "bench.designs=[adapter,bitfit,spindle_t5base]",
            "bench.variants=[design,floor]",
            "bench.memory=false",
            *SMALL,
            f"bench.out={out}",
        ]
    )
    capsys.readouterr()
    assert code == 0
    rec = json.loads(out.read_text())
    assert list(rec["variants"]) == ["design", "design:adapter", "design:bitfit", "floor"]
    assert rec["designs"]["design:adapter"]["design"] == "adapter"
    assert set(rec["ratios"]) >= {"design/floor", "design:adapter/floor", "design:bitfit/floor"}
    assert "peft_lora" not in rec["variants"] and rec["variants"]["floor"]["peak_mem_mb"] is None
    # a design the model cannot realise (24-layer sizes on a smaller stack) is recorded, the others timed
    assert (
        list(rec["errors"]) == ["design:spindle_t5base"] and "spindle_t5base" in rec["errors"]["design:spindle_t5base"]
    )


def test_bench_rejects_unknown_variant(capsys):
    code = main(["bench", "model=tiny_bert", "bench.variants=[design,nonesuch]"])
    assert code == 2 and "nonesuch" in capsys.readouterr().err


def test_bench_paper_shape_config_without_special_ids(capsys, tmp_path):
    """A T5 shape without decoder_start_token_id (a user's config; ours set it): bench fills it."""
    out = tmp_path / "b.json"
    code = main(
        [
            "bench",
            "model=t5_base",
            "model.pretrained=false",
            "model.shape.d_model=32",
            "model.shape.d_ff=64",
            "model.shape.num_layers=1",
            "model.shape.num_decoder_layers=1",
            "model.shape.vocab_size=8000",
            "~model.shape.decoder_start_token_id",
            "budget=p2",
            "design=lora",
            "bench.variants=[design,floor]",
            "bench.memory=false",
            *SMALL,
            f"bench.out={out}",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "decoder_start_token_id=0" in printed
    rec = json.loads(out.read_text())
    assert rec["filled_config"] == {"decoder_start_token_id": 0} and rec["variants"]["design"]["median_ms"] > 0


TINY_T5 = ["model=tiny_t5", "model.shape.num_layers=2", "model.shape.num_decoder_layers=2"]


@pytest.mark.slow
def test_bench_eager_vs_compiled(capsys, tmp_path):
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            *TINY_T5,
            "design=lora",
            "bench.compile=true",
            "bench.variants=[design,floor]",
            "bench.batch_size=2",
            "bench.source_len=8",
            "bench.target_len=2",
            "bench.steps=2",
            "bench.warmup=0",
            f"bench.out={out}",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "compiled design / eager floor" in printed
    rec = json.loads(out.read_text())
    assert list(rec["variants"]) == ["design", "floor", "design_compiled"]
    e = rec["compile"]["variants"]["design_compiled"]
    assert e["outputs"]["match"] and e["outputs"]["loss_rel_diff"] <= 1e-4
    assert e["compile_counts"]["frames"] == 1 and e["recompiles"] == 0 and "dropped" not in e
    vs = rec["variants"]
    assert math.isclose(
        rec["ratios"]["design_compiled/floor"], vs["design_compiled"]["median_ms"] / vs["floor"]["median_ms"]
    )
    assert math.isclose(
        rec["ratios"]["design_compiled/design"], vs["design_compiled"]["median_ms"] / vs["design"]["median_ms"]
    )


def test_bench_tiny_llama(capsys, tmp_path):
    """peft LoRA on a decoder's q/v by the family's own names (GQA: v is narrower than q)."""
    rec, printed = run_bench(capsys, tmp_path, "model=tiny_llama", "design=spindle")
    check_record(rec)
    assert rec["family"] == "llama" and not rec["seq2seq"] and "design/peft_lora" in printed
    assert rec["peft_lora"]["targets"] == ["q_proj", "v_proj"]
    assert rec["peft_lora"]["params_per_rank"] == 8 * ((64 + 64) + (64 + 32))  # 8 layers; q 4x16, v 2x16 wide


def test_peft_lora_plan_adapts_a_fused_module_whole(compose_cfg):
    """GPT-2's q, k, v live in one Conv1D: peft adapts c_attn once per layer (its full 3·d output)."""
    from peftds.bench.variants import peft_lora_plan
    from peftds.model.backbones import Backbone, build_model

    bb = Backbone(build_model(compose_cfg("model=tiny_gpt2").model, num_labels=2, device="meta"))
    plan = peft_lora_plan(bb, 10_000)
    assert plan["targets"] == ["c_attn"] and plan["params_per_rank"] == 6 * (64 + 3 * 64)
