"""peftds.bench.eval: `peftds bench-eval` (label-word ranking vs greedy generation) on tiny_t5."""

import json
import math

from peftds.cli import main


def test_bench_eval_rank_vs_generate(capsys, tmp_path, data_dir):
    out = tmp_path / "e.json"
    code = main(
        [
            "bench-eval",
            "model=tiny_t5",
            "model.shape.num_layers=2",
            "model.shape.num_decoder_layers=2",
            f"data.dir={data_dir}",
            "bench.eval.samples=24",
            "bench.eval.batch_size=8",
            "bench.eval.train_steps=30",
            "bench.eval.train_batch_size=8",
            f"bench.out={out}",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "examples/s" in printed
    rec = json.loads(out.read_text())
    assert rec["model"] == "tiny_t5" and rec["task"] == "sst2"
    assert rec["examples"] == 24 and rec["rank"]["examples_per_s"] > 0 and rec["generate"]["examples_per_s"] > 0
    assert math.isfinite(rec["train_loss"]) and "30 full fine-tuning steps" in rec["weights"]
    assert 0 <= rec["identical_where_valid"] <= rec["valid_generations"] <= 24
    assert rec["all_identical_where_valid"] == (rec["identical_where_valid"] == rec["valid_generations"])
    assert math.isclose(rec["speedup_rank_vs_generate"], rec["generate"]["seconds"] / rec["rank"]["seconds"])


def test_bench_eval_rejects_an_encoder_model(capsys, tmp_path):
    code = main(["bench-eval", "model=tiny_bert", f"bench.out={tmp_path / 'e.json'}"])
    assert code == 2 and "text-to-text model" in capsys.readouterr().err
