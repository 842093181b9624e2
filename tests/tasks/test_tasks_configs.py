"""Task and task-set configs: every file loads, label maps and scores follow GLUE conventions."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from peftds.errors import PeftdsError
from peftds.data.tasks import Task, known_tasks, load_task, task_set

ALL = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli", "xsum", "wmt16_en_ro"]

# (label words in class-index order, score metrics) per the HF glue schema / SPEC §6
EXPECTED = {
    "cola": (["unacceptable", "acceptable"], ["mcc"]),
    "sst2": (["negative", "positive"], ["accuracy"]),
    "mrpc": (["not_equivalent", "equivalent"], ["f1", "accuracy"]),
    "qqp": (["not_duplicate", "duplicate"], ["f1", "accuracy"]),
    "stsb": (None, ["pearson", "spearman"]),
    "mnli": (["entailment", "neutral", "contradiction"], ["accuracy"]),
    "qnli": (["entailment", "not_entailment"], ["accuracy"]),
    "rte": (["entailment", "not_entailment"], ["accuracy"]),
    "wnli": (["not_entailment", "entailment"], ["accuracy"]),
    "xsum": (None, ["rouge1"]),
    "wmt16_en_ro": (None, ["bleu"]),
}


def test_every_task_file_loads(conf_dir):
    assert sorted(known_tasks(conf_dir)) == sorted(ALL)
    for name in ALL:
        t = load_task(name, conf_dir)
        words, score = EXPECTED[name]
        assert t.name == name
        assert t.label_words == words, name
        assert t.score == score, name
        assert t.num_labels == (len(words) if words else (1 if t.kind == "regression" else 0))
        assert t.hub["path"] and t.local and t.generation["max_source_len"] > 0
        row = {c: f"<{c}>" for c in t.input_columns}
        src = t.source_text(row)
        assert all(f"<{c}>" in src for c in t.input_columns)


def test_kinds_and_special_settings(conf_dir):
    assert load_task("stsb", conf_dir).kind == "regression"
    assert load_task("xsum", conf_dir).kind == load_task("wmt16_en_ro", conf_dir).kind == "generation"
    assert load_task("mnli", conf_dir).eval_splits == ["validation", "validation_mismatched"]
    assert load_task("rte", conf_dir).eval_splits == ["validation"]
    assert load_task("xsum", conf_dir).metrics == ["rouge1", "rouge2", "rougeL"]
    assert load_task("sst2", conf_dir).source_text({"sentence": "great film"}) == "sst2 sentence: great film"
    assert load_task("wmt16_en_ro", conf_dir).source_text({"en": "Hi"}) == "translate English to Romanian: Hi"


def test_default_conf_dir_is_repo_conf():
    assert load_task("sst2").name == "sst2"  # no conf_dir: the repository's conf/


def test_unknown_task_error_names_it_and_lists_known(conf_dir):
    with pytest.raises(PeftdsError) as e:
        load_task("sst3", conf_dir)
    msg = str(e.value)
    assert "sst3" in msg and "sst2" in msg and "wmt16_en_ro" in msg


def test_task_sets(conf_dir):
    glue = task_set("glue", conf_dir)
    assert sorted(glue) == sorted(["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"])
    local = task_set("glue_local", conf_dir)
    assert sorted(local) == sorted(["cola", "sst2", "mrpc", "stsb", "rte", "wnli"])
    search = task_set("glue_search", conf_dir)
    assert set(search) <= set(local) and set(search) <= set(glue)
    with pytest.raises(PeftdsError, match="glue_all.*glue_search"):
        task_set("glue_all", conf_dir)


def test_task_set_with_unknown_task(tmp_path, conf_dir):
    (tmp_path / "task_set").mkdir()
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "sst2.yaml").write_text((conf_dir / "task" / "sst2.yaml").read_text())
    (tmp_path / "task_set" / "bad.yaml").write_text("tasks: [sst2, nope]\n")
    with pytest.raises(PeftdsError, match="nope"):
        task_set("bad", tmp_path)


def test_from_config_checks(conf_dir):
    cfg = OmegaConf.load(conf_dir / "task" / "rte.yaml")
    assert Task.from_config(cfg) == load_task("rte", conf_dir)
    bad = OmegaConf.to_container(cfg)
    bad["label_words"] = ["entailment"]
    with pytest.raises(PeftdsError, match="one word per class"):
        Task.from_config(bad)
    bad = OmegaConf.to_container(cfg)
    bad["score"] = ["f1"]
    with pytest.raises(PeftdsError, match="among metrics"):
        Task.from_config(bad)
    bad = OmegaConf.to_container(cfg)
    bad["metrics"] = ["acc"]
    with pytest.raises(PeftdsError, match="unknown metric 'acc'"):
        Task.from_config(bad)
    bad = OmegaConf.to_container(cfg)
    bad["lable_words"] = bad.pop("label_words")
    with pytest.raises(PeftdsError, match="lable_words"):
        Task.from_config(bad)


def test_regression_targets_and_decoding(conf_dir):
    stsb = load_task("stsb", conf_dir)
    assert stsb.format_regression(3.4) == "3.4"
    assert stsb.format_regression(3.45) == "3.4"
    assert stsb.format_regression(3.5) == "3.6"  # half-up on the 0.2 grid
    assert stsb.format_regression(4.75) == "4.8"
    assert stsb.format_regression(0.0) == "0.0" and stsb.format_regression(5.0) == "5.0"
    assert stsb.format_regression(7.0) == "5.0"
    c = stsb.candidates()
    assert len(c) == 26 and c[0] == "0.0" and c[1] == "0.2" and c[-1] == "5.0"
    assert stsb.candidate_to_prediction(17) == pytest.approx(3.4)
    assert stsb.decode("3.4") == pytest.approx(3.4)
    assert stsb.decode(" 3 . 4 ") == pytest.approx(3.4)  # WordPiece decoding puts spaces around '.'
    assert stsb.decode("9") == 5.0 and stsb.decode("n/a") == 2.5


def test_classification_decoding(conf_dir):
    rte = load_task("rte", conf_dir)
    assert rte.decode("entailment") == 0
    assert rte.decode("not _ entailment") == 1  # WordPiece decoding of "not_entailment"
    assert rte.decode("Not_Entailment ") == 1
    assert rte.decode("maybe") == -1
    assert rte.candidate_to_prediction(1) == 1
    assert load_task("xsum", conf_dir).decode(" a summary ") == "a summary"
    with pytest.raises(PeftdsError, match="generation"):
        load_task("xsum", conf_dir).candidates()


def test_data_default_config(conf_dir, monkeypatch):
    monkeypatch.setenv("PEFTDS_DATA", "/some/folder")
    cfg = OmegaConf.load(conf_dir / "data" / "default.yaml")
    assert cfg.dir == "/some/folder"
    monkeypatch.delenv("PEFTDS_DATA")
    cfg = OmegaConf.load(conf_dir / "data" / "default.yaml")
    assert cfg.dir is None
    assert cfg.source == "auto" and cfg.heldout == 0.1 and cfg.heldout_max == 1000 and cfg.seed == 0
    assert cfg.max_train_samples is None and cfg.max_eval_samples is None
