"""peftds.bench.tables: one table over several bench.json files."""

import json

from peftds.bench.tables import main, merge_tables


def record(ms):
    variant = {"label": "x", "trainable_params": 10, "median_ms": ms, "peak_mem_mb": None}
    return {
        "model": "m",
        "device_name": "cpu",
        "dtype": "fp32",
        "batch_size": 2,
        "source_len": 8,
        "target_len": 2,
        "steps": 3,
        "variants": {
            "design": {**variant, "label": "design lora"},
            "floor": {**variant, "median_ms": 10.0},
            "peft_lora": {**variant, "median_ms": 20.0},
        },
        "compile": None,
        "ratios": {},
    }


def test_merge_tables(tmp_path, capsys):
    paths = []
    for i, ms in enumerate((15.0, 30.0)):
        p = tmp_path / f"run{i}.json"
        p.write_text(json.dumps(record(ms)))
        paths.append(str(p))
    text = merge_tables(paths)
    assert "[run0]" in text and "[run1]" in text
    assert "1.50x" in text and "3.00x" in text and "0.75x" in text  # design / floor and / peft LoRA
    assert main(paths) == 0 and capsys.readouterr().out.strip() == text.strip()
    assert main([]) == 2
