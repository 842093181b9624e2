"""Data loading on the real local data folder: split sizes, the held-out carve-out, errors, encoding."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from peftds.data import loading as D
from peftds.data.tasks import load_task
from peftds.errors import PeftdsError

LOCAL_GLUE = {  # task: (train rows, dev rows) from the data README
    "cola": (8551, 1043),
    "sst2": (67349, 872),
    "mrpc": (3668, 408),
    "rte": (2490, 277),
    "stsb": (5749, 1500),
    "wnli": (635, 71),
}


def cfg(root, **kw):
    return {"dir": str(root), **kw}


def idx(ds):
    return ds["idx"][:]  # a plain list (iterating a datasets Column row by row is slow)


@pytest.mark.parametrize("name", sorted(LOCAL_GLUE))
def test_glue_split_sizes(name, data_dir, conf_dir):
    n_train, n_dev = LOCAL_GLUE[name]
    dd = D.load_splits(load_task(name, conf_dir), cfg(data_dir))
    n_held = min(round(0.1 * n_train), 1000)
    assert len(dd["heldout"]) == n_held
    assert len(dd["train"]) == n_train - n_held
    assert len(dd["validation"]) == n_dev
    assert set(idx(dd["train"])).isdisjoint(idx(dd["heldout"]))
    assert len(set(idx(dd["train"])) | set(idx(dd["heldout"]))) == n_train


def test_heldout_stable_disjoint_and_independent_of_max_train(data_dir, conf_dir):
    rte = load_task("rte", conf_dir)
    a = D.load_splits(rte, cfg(data_dir))
    b = D.load_splits(rte, cfg(data_dir))
    c = D.load_splits(rte, cfg(data_dir, max_train_samples=100))
    d = D.load_splits(rte, cfg(data_dir, max_train_samples=50))
    assert idx(a["heldout"]) == idx(b["heldout"]) == idx(c["heldout"]) == idx(d["heldout"])
    assert idx(a["train"]) == idx(b["train"])
    assert len(c["train"]) == 100 and len(d["train"]) == 50
    assert set(idx(d["train"])) <= set(idx(c["train"])) <= set(idx(a["train"]))  # nested subsamples
    assert set(idx(c["train"])).isdisjoint(idx(c["heldout"]))
    # the heldout rows are not the first rows of the file (a seeded carve-out), and the seed matters
    assert idx(a["heldout"]) != list(range(len(a["heldout"])))
    e = D.load_splits(rte, cfg(data_dir, seed=1))
    assert idx(e["heldout"]) != idx(a["heldout"])
    # the rows carry their content: heldout row equals the file's row with that idx
    rows = {r["idx"]: r for r in map(json.loads, (data_dir / "glue/rte/train.jsonl").read_text().splitlines())}
    r0 = a["heldout"][0]
    assert rows[r0["idx"]]["sentence1"] == r0["sentence1"] and rows[r0["idx"]]["label"] == r0["label"]


def test_heldout_count_cap_zero_and_eval_subsample(data_dir, conf_dir):
    mrpc = load_task("mrpc", conf_dir)
    dd = D.load_splits(mrpc, cfg(data_dir, heldout=100))
    assert len(dd["heldout"]) == 100 and len(dd["train"]) == 3568
    dd = D.load_splits(mrpc, cfg(data_dir, heldout=0.5, heldout_max=30, max_eval_samples=40))
    assert len(dd["heldout"]) == 30 and len(dd["validation"]) == 40
    again = D.load_splits(mrpc, cfg(data_dir, heldout=0.5, heldout_max=30, max_eval_samples=40))
    assert idx(dd["validation"]) == idx(again["validation"])
    dd = D.load_splits(mrpc, cfg(data_dir, heldout=0))
    assert len(dd["heldout"]) == 0 and len(dd["train"]) == 3668


def test_heldout_size_rule():
    assert D.heldout_size(1000, 0.1, 1000) == 100
    assert D.heldout_size(67349, 0.1, 1000) == 1000
    assert D.heldout_size(1000, 250, None) == 250
    assert D.heldout_size(5, 10, None) == 4  # at least one training row stays
    with pytest.raises(PeftdsError):
        D.heldout_size(10, -1, None)


def test_xsum_local_split(data_dir, conf_dir):
    xsum = load_task("xsum", conf_dir)
    dd = D.load_splits(xsum, cfg(data_dir))
    assert len(dd["validation"]) == 200 and len(dd["heldout"]) == 80 and len(dd["train"]) == 720
    ids = [set(dd[s]["id"][:]) for s in ("train", "heldout", "validation")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert len(ids[0] | ids[1] | ids[2]) == 1000
    # the dev set does not move with data.seed (it is fixed by the task's split_seed)
    other = D.load_splits(xsum, cfg(data_dir, seed=7))
    assert other["validation"]["id"][:] == dd["validation"]["id"][:]
    assert set(other["heldout"]["id"][:]) != ids[1]


def test_wmt_local_flatten_and_diacritics(data_dir, conf_dir):
    wmt = load_task("wmt16_en_ro", conf_dir)
    dd = D.load_splits(wmt, cfg(data_dir))
    assert len(dd["validation"]) == 1999  # newstest2016
    assert len(dd["train"]) + len(dd["heldout"]) == 5508  # Tatoeba
    assert {"en", "ro"} <= set(dd["train"].column_names) and "translation" not in dd["train"].column_names
    assert dd["validation"][0]["en"] == "UN Chief Says There Is No Military Solution in Syria"
    for split in dd.values():
        assert not any(ch in s for s in split["ro"][:] for ch in "şţŞŢ")
    assert any("ș" in s for s in dd["train"]["ro"][:])


def test_missing_local_file_names_path(tmp_path, data_dir, conf_dir):
    (tmp_path / "glue" / "rte").mkdir(parents=True)
    shutil.copy(data_dir / "glue/rte/train.jsonl", tmp_path / "glue/rte/train.jsonl")
    rte = load_task("rte", conf_dir)
    with pytest.raises(PeftdsError) as e:
        D.load_splits(rte, cfg(tmp_path, source="local"))
    assert str(tmp_path / "glue/rte/validation.jsonl") in str(e.value)
    with pytest.raises(PeftdsError, match="no data folder"):
        D.load_splits(rte, {"dir": None, "source": "local"})


def _no_hub(monkeypatch):
    import datasets

    real = datasets.load_dataset

    def guarded(path, *a, **kw):
        if path not in ("json", "csv", "parquet"):
            raise AssertionError(f"hub contacted for {path}")
        return real(path, *a, **kw)

    monkeypatch.setattr(datasets, "load_dataset", guarded)


def test_offline_without_data_fails_fast_in_one_line(monkeypatch, tmp_path, data_dir, conf_dir):
    _no_hub(monkeypatch)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(PeftdsError) as e:
        D.load_splits(load_task("sst2", conf_dir), {"dir": None})
    assert time.time() - t0 < 2
    msg = str(e.value)
    assert "\n" not in msg
    assert "nyu-mll/glue (sst2)" in msg and "data.dir=" in msg and "PEFTDS_DATA" in msg
    # a folder without the task's files: the error names the missing file
    with pytest.raises(PeftdsError) as e:
        D.load_splits(load_task("sst2", conf_dir), {"dir": str(tmp_path)})
    assert str(tmp_path / "glue/sst2/train.jsonl") in str(e.value) and "\n" not in str(e.value)
    # QNLI: only the dev set is local -> names the missing train file
    with pytest.raises(PeftdsError) as e:
        D.load_splits(load_task("qnli", conf_dir), cfg(data_dir))
    assert str(data_dir / "glue/qnli/train.jsonl") in str(e.value)
    assert "glue/qnli/validation.jsonl," not in str(e.value).split("holding")[0]  # present file not called missing
    for name in ("qqp", "mnli"):
        with pytest.raises(PeftdsError, match=f"task '{name}'.*not available offline"):
            D.load_splits(load_task(name, conf_dir), cfg(data_dir))
    # HF_HUB_OFFLINE alone also counts as offline; source=hub offline fails too
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PeftdsError, match="not available offline"):
        D.load_splits(load_task("rte", conf_dir), cfg(data_dir, source="hub"))


def test_auto_uses_local_files_without_hub(monkeypatch, data_dir, conf_dir):
    _no_hub(monkeypatch)
    dd = D.load_splits(load_task("wnli", conf_dir), {"dir": str(data_dir), "source": "auto"})
    assert len(dd["validation"]) == 71


def test_data_config_checks():
    with pytest.raises(PeftdsError, match="max_train_sample"):
        D.data_config({"max_train_sample": 10})
    with pytest.raises(PeftdsError, match="source"):
        D.data_config({"source": "web"})
    assert D.data_config(None)["heldout"] == 0.1


def test_local_tsv_file(data_dir, conf_dir):
    """Raw GLUE TSVs load through the csv builder (tab separated, no quoting) when a task points at them."""
    from omegaconf import OmegaConf

    from peftds.data.tasks import Task

    c = OmegaConf.to_container(OmegaConf.load(conf_dir / "task" / "sst2.yaml"))
    c["local"] = {"train": "glue/raw/SST-2/dev.tsv", "validation": "glue/sst2/validation.jsonl"}
    dd = D.load_splits(Task.from_config(c), cfg(data_dir, heldout=0))
    assert len(dd["train"]) == len(dd["validation"]) == 872
    assert dd["train"][1]["sentence"].strip() == dd["validation"][1]["sentence"].strip()
    assert dd["train"]["label"] == dd["validation"]["label"]
