"""peftds.bench.data: `peftds bench-data` on real task data; the padding figures."""

import json
import random

from peftds.bench.data import data_table, padding_figures
from peftds.cli import main


def test_padding_figures_and_table():
    rng = random.Random(0)
    lengths = [min(64, 3 + int(rng.expovariate(1 / 10))) for _ in range(500)]
    f = padding_figures(lengths, 16, 64, seed=0, mega_batches=4)
    assert f["examples"] == 500 and f["real_tokens"] == sum(lengths) and f["mega_batches"] == 4
    assert 1.0 <= f["grouped_whole_sort"] <= f["grouped"] < f["random_dynamic"] < f["fixed"]
    assert f["every_example_once"] and f["batches_differ_between_epochs"]
    text = data_table({"tokenizer": "tok", "tasks": {"toy": f}})
    assert "toy" in text and "mega-batches of 4 batches" in text and "epoch time" not in text


def test_bench_data_real_tasks(capsys, tmp_path, data_dir):
    """Real SST-2 / CoLA / RTE train sets with the MiniLM tokenizer (tiny_bert uses it)."""
    out = tmp_path / "d.json"
    code = main(
        [
            "bench-data",
            "model=tiny_bert",
            "design=lora",
            f"data.dir={data_dir}",
            "bench.data.time_tasks=[rte]",
            "bench.data.time_samples=24",
            "bench.data.batch_size=8",
            f"bench.out={out}",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "sst2" in printed and "speed-up" in printed
    rec = json.loads(out.read_text())
    assert rec["model"] == "tiny_bert" and rec["design"] == "lora"
    for name in ("sst2", "cola"):
        t = rec["tasks"][name]
        assert t["grouped"] <= 1.15  # processed tokens within 1.15x of the real ones
        assert t["fixed"] >= 8 * t["grouped"]  # >= 8x fewer than padding to 128
        assert t["grouped_whole_sort"] <= t["grouped"] < t["random_dynamic"] < t["fixed"]
        assert t["every_example_once"] and t["batches_differ_between_epochs"]
        assert t["batch_mate_overlap"]["grouped"] < 0.1
    assert rec["tasks"]["sst2"]["examples"] == 67349
    timing = rec["tasks"]["rte"]["timing"]
    assert timing["examples"] == 24
    assert timing["grouped"]["processed_tokens"] < timing["fixed"]["processed_tokens"]
    assert all(timing[k]["epoch_s"] > 0 for k in ("fixed", "random_dynamic", "grouped"))
