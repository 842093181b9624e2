"""Label-word ranking (text-to-text classification) on tiny random-init encoder-decoders."""
from __future__ import annotations

import pytest
import torch
import transformers

from peftds.data import loading as D
from peftds.data.tasks import load_task, rank_labels


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models are overhead-bound: one intra-op thread is ~10x faster on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_t5(tok, seed=0):
    cfg = transformers.T5Config(
        d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=8, vocab_size=len(tok),
        decoder_start_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id,
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
                loss = model(input_ids=input_ids[i:i + 1, :n], labels=torch.tensor([ids])).loss
                out[i, c] = -loss.item() * len(ids)
    return out


def batch_of(tok, task, raw):
    enc = D.encode(task, tok, raw, "seq2seq", 64, 8)
    feats = tok.pad({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, return_tensors="pt")
    return enc, feats["input_ids"], feats["attention_mask"]


@pytest.fixture(scope="module")
def sst2_rows(data_root, conf_dir):
    task = load_task("sst2", conf_dir)
    dd = D.load_splits(task, {"dir": str(data_root), "max_train_samples": 8})
    return task, dd["train"]


@pytest.mark.slow  # ~3 s: fits a tiny T5
def test_rank_labels_picks_the_trained_class(s2s_tokenizer, sst2_rows):
    """Fit a tiny T5 to 8 real SST-2 rows, then ranking the label words recovers every label, and its
    scores equal the brute-force per-example sequence log-likelihoods."""
    tok = s2s_tokenizer
    task, raw = sst2_rows
    enc, ids, mask = batch_of(tok, task, raw)
    labels = torch.nn.utils.rnn.pad_sequence([torch.tensor(x) for x in enc["labels"]], batch_first=True, padding_value=-100)
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


def test_rank_labels_matches_brute_force_with_unequal_lengths(s2s_tokenizer, data_root, conf_dir):
    """RTE label words have different token counts (4 vs 6 with eos): check raw and length-normalised
    scores against the brute force on padded real rows, and that the argmax follows the scores."""
    tok = s2s_tokenizer
    task = load_task("rte", conf_dir)
    raw = D.load_splits(task, {"dir": str(data_root), "max_eval_samples": 6})["validation"]
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


def test_rank_labels_on_bart(s2s_tokenizer, data_root, conf_dir):
    tok = s2s_tokenizer
    task = load_task("mrpc", conf_dir)
    raw = D.load_splits(task, {"dir": str(data_root), "max_eval_samples": 4})["validation"]
    _, ids, mask = batch_of(tok, task, raw)
    cfg = transformers.BartConfig(
        vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.cls_token_id,
        decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=None,
    )
    torch.manual_seed(0)
    model = transformers.BartForConditionalGeneration(cfg).eval()
    cands = D.label_word_ids(task, tok)
    pred, scores = rank_labels(model, ids, mask, cands, return_scores=True)
    torch.testing.assert_close(scores, brute_force_scores(model, ids, mask, cands), rtol=1e-4, atol=1e-4)
    assert pred.tolist() == scores.argmax(-1).tolist()
