"""peftds.data.tasks: task and task-set configs (every file loads, label maps and scores follow GLUE
conventions) and label-word ranking (text-to-text classification) on tiny random-init encoder-decoders."""

from __future__ import annotations

import pytest
import torch
import transformers
from omegaconf import OmegaConf

from peftds.data import loading as D
from peftds.data.tasks import Task, known_tasks, load_task, rank_labels, task_set
from peftds.errors import PeftdsError

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
    with pytest.raises(PeftdsError, match=r"glue_all.*glue_search"):
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


# ----------------------------------------------------------------------------- label-word ranking
# Tiny models are overhead-bound: one intra-op thread (the root `one_thread` fixture) is ~10x faster.
ranking = pytest.mark.usefixtures("one_thread")


def tiny_t5(tok, seed=0):
    cfg = transformers.T5Config(
        d_model=32,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        d_kv=8,
        vocab_size=len(tok),
        decoder_start_token_id=tok.pad_token_id,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.sep_token_id,
    )
    torch.manual_seed(seed)
    return transformers.T5ForConditionalGeneration(cfg)


def brute_force_scores(model, input_ids, attention_mask, cands):
    """Per example, per candidate: -loss * len from a full, unbatched forward with labels."""
    out = torch.empty(input_ids.shape[0], len(cands))
    with torch.no_grad():
        for i in range(input_ids.shape[0]):
            n = int(attention_mask[i].sum())
            for c, ids in enumerate(cands):
                loss = model(input_ids=input_ids[i : i + 1, :n], labels=torch.tensor([ids])).loss
                out[i, c] = -loss.item() * len(ids)
    return out


def batch_of(tok, task, raw):
    enc = D.encode(task, tok, raw, "seq2seq", 64, 8)
    feats = tok.pad({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, return_tensors="pt")
    return enc, feats["input_ids"], feats["attention_mask"]


@pytest.fixture(scope="module")
def sst2_rows(data_dir, conf_dir):
    task = load_task("sst2", conf_dir)
    dd = D.load_splits(task, {"dir": str(data_dir), "max_train_samples": 8})
    return task, dd["train"]


@pytest.mark.slow  # ~3 s: fits a tiny T5
@ranking
def test_rank_labels_picks_the_trained_class(s2s_tokenizer, sst2_rows):
    """Fit a tiny T5 to 8 real SST-2 rows, then ranking the label words recovers every label, and its
    scores equal the brute-force per-example sequence log-likelihoods."""
    tok = s2s_tokenizer
    task, raw = sst2_rows
    enc, ids, mask = batch_of(tok, task, raw)
    labels = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(x) for x in enc["labels"]], batch_first=True, padding_value=-100
    )
    gold = torch.tensor(enc["label_index"])
    assert 0 < gold.sum() < len(gold)  # both classes present: not solvable by a constant
    model = tiny_t5(tok)
    cands = D.label_word_ids(task, tok)
    model.shared.weight.requires_grad_(False)  # tied embeddings / LM head stay fixed: cheap steps
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(150):
        model.train()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 5 == 4:  # stop as soon as the ranking separates the classes with a margin
            model.eval()
            _, s = rank_labels(model, ids, mask, cands, return_scores=True)
            margin = (s.gather(1, gold[:, None]) - s.gather(1, 1 - gold[:, None])).min()
            if margin > 1.0:
                break
    model.eval()
    pred, scores = rank_labels(model, ids, mask, cands, return_scores=True)
    assert pred.dtype == torch.long and pred.tolist() == gold.tolist()
    ref = brute_force_scores(model, ids, mask, cands)
    torch.testing.assert_close(scores, ref, rtol=1e-4, atol=1e-4)


@ranking
def test_rank_labels_matches_brute_force_with_unequal_lengths(s2s_tokenizer, data_dir, conf_dir):
    """RTE label words have different token counts (4 vs 6 with eos): check raw and length-normalised
    scores against the brute force on padded real rows, and that the argmax follows the scores."""
    tok = s2s_tokenizer
    task = load_task("rte", conf_dir)
    raw = D.load_splits(task, {"dir": str(data_dir), "max_eval_samples": 6})["validation"]
    _, ids, mask = batch_of(tok, task, raw)
    assert (mask == 0).any()  # padding present
    cands = D.label_word_ids(task, tok)
    assert len(cands[0]) != len(cands[1])
    model = tiny_t5(tok, seed=1).eval()
    ref = brute_force_scores(model, ids, mask, cands)
    pred, scores = rank_labels(model, ids, mask, cands, return_scores=True)
    torch.testing.assert_close(scores, ref, rtol=1e-4, atol=1e-4)
    assert pred.tolist() == ref.argmax(-1).tolist()
    pred_n, scores_n = rank_labels(model, ids, mask, cands, length_normalize=True, return_scores=True)
    lens = torch.tensor([len(c) for c in cands], dtype=torch.float32)
    torch.testing.assert_close(scores_n, ref / lens, rtol=1e-4, atol=1e-4)
    assert pred_n.tolist() == (ref / lens).argmax(-1).tolist()


@ranking
def test_rank_labels_runs_encoder_once(s2s_tokenizer, sst2_rows):
    tok = s2s_tokenizer
    task, raw = sst2_rows
    _, ids, mask = batch_of(tok, task, raw)
    model = tiny_t5(tok).eval()
    calls = {"enc": 0, "dec": 0}
    model.get_encoder().register_forward_hook(lambda *a: calls.__setitem__("enc", calls["enc"] + 1))
    model.get_decoder().register_forward_hook(lambda *a: calls.__setitem__("dec", calls["dec"] + 1))
    cands = D.label_word_ids(load_task("stsb", None), tok)  # 26 candidates
    rank_labels(model, ids, mask, cands)
    assert calls == {"enc": 1, "dec": 26}


@ranking
def test_rank_labels_on_bart(s2s_tokenizer, data_dir, conf_dir):
    tok = s2s_tokenizer
    task = load_task("mrpc", conf_dir)
    raw = D.load_splits(task, {"dir": str(data_dir), "max_eval_samples": 4})["validation"]
    _, ids, mask = batch_of(tok, task, raw)
    cfg = transformers.BartConfig(
        vocab_size=len(tok),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.cls_token_id,
        decoder_start_token_id=tok.eos_token_id,
        forced_eos_token_id=None,
    )
    torch.manual_seed(0)
    model = transformers.BartForConditionalGeneration(cfg).eval()
    cands = D.label_word_ids(task, tok)
    pred, scores = rank_labels(model, ids, mask, cands, return_scores=True)
    torch.testing.assert_close(scores, brute_force_scores(model, ids, mask, cands), rtol=1e-4, atol=1e-4)
    assert pred.tolist() == scores.argmax(-1).tolist()
