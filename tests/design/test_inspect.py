"""`peftds inspect` (peftds.design.inspect): the JSON schema, the table, overrides and design files."""

import json

from tests.helpers import run_main

LAYER_KEYS = {"index", "stack", "group", "modules"}


def test_inspect_json_schema(capsys):
    code, out, _err = run_main(capsys, "inspect", "model=tiny_t5", "design=spindle_t5base", "format=json")
    assert code == 0
    rep = json.loads(out)  # stdout is exactly one JSON object
    for key, typ in {
        "model": str,
        "backbone_params": int,
        "budget_params": int,
        "trainable_params": int,
        "head_params": int,
        "groups": list,
        "layers": list,
    }.items():
        assert isinstance(rep[key], typ), key
    assert rep["model"] == "tiny_t5" and rep["groups"] == [4, 8, 8, 4]
    assert len(rep["layers"]) == 24
    total = 0
    for i, layer in enumerate(rep["layers"]):
        assert set(layer) >= LAYER_KEYS and layer["index"] == i
        assert layer["stack"] == ("encoder" if i < 12 else "decoder")
        assert 1 <= layer["group"] <= 4
        for name, m in layer["modules"].items():
            assert name in {"adapter", "prefix", "lora", "bitfit"}
            assert ("size" in m) == (name != "bitfit") and isinstance(m["params"], int)
            total += m["params"]
    assert set(rep["layers"][0]["modules"]) == {"adapter", "lora"}
    assert set(rep["layers"][23]["modules"]) == {"prefix", "bitfit", "lora"}
    assert total == rep["trainable_params"] <= rep["budget_params"]


def test_inspect_override_shape(capsys):
    code, out, _ = run_main(capsys, "inspect", "model=tiny_t5", "model.shape.d_kv=16", "design=lora", "format=json")
    assert code == 0
    assert json.loads(out)["layers"][0]["modules"]["lora"]["params"] % (64 + 64) == 0  # r·(d_in+d_out), h·d_kv=64


def test_inspect_table(capsys):
    code, out, _ = run_main(capsys, "inspect", "model=minilm_l6", "design=lora")
    assert code == 0 and "trainable" in out and "backbone params" in out and "lora(r=" in out


def test_design_file_path(tmp_path, capsys):
    f = tmp_path / "mine.yaml"
    f.write_text(
        "name: mine\ngrouping: {groups: 2, sizes: [2, 4]}\ntuned: [2]\nallocation: uniform\n"
        "strategies: [[lora], [adapter, bitfit]]\n"
    )
    code, out, _ = run_main(capsys, "inspect", "model=tiny_bert", f"design={f}", "format=json")
    assert code == 0
    rep = json.loads(out)
    assert rep["groups"] == [2, 4] and rep["layers"][0]["modules"] == {}


def test_full_fine_tuning_shows_each_blocks_weights_and_no_budget(capsys):
    """design=full: every layer row counts its block's weights; no '% of budget' (no budget applies)."""
    code, out, _ = run_main(capsys, "inspect", "model=tiny_bert", "design=full", "format=json")
    rep = json.loads(out)
    per_layer = [layer["modules"]["full"]["params"] for layer in rep["layers"]]
    assert code == 0 and rep["full"] and len(per_layer) == 6 and min(per_layer) > 0
    assert sum(per_layer) < rep["trainable_params"] == rep["backbone_params"]  # embeddings train too
    code, out, _ = run_main(capsys, "inspect", "model=tiny_bert", "design=full")
    assert code == 0 and "% of budget" not in out and "full fine-tuning (every weight)" in out
    assert f"{per_layer[0]:,}" in out.splitlines()[1]
