"""Splits are deterministic, stratified and disjoint; batches pad per batch by length."""

from collections import Counter

import pytest
from conftest import toy_rows, write_csv

from tunelab.batches import collate, encode, eval_batches, train_batches
from tunelab.config import DataConfig
from tunelab.data import load_splits
from tunelab.models import load_tokenizer


def test_rotten_tomatoes_builtin_split():
    s = load_splits(DataConfig())
    assert (len(s.train), len(s.validation), len(s.test)) == (10202, 1275, 1275)
    assert s.label_names == ["negative", "positive"]
    texts = [set(p.texts) for p in (s.train, s.validation, s.test)]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    # stratified: positive share equal across splits within a fraction of a point
    shares = [sum(p.labels) / len(p) for p in (s.train, s.validation, s.test)]
    assert max(shares) - min(shares) < 0.005
    again = load_splits(DataConfig())
    assert again.test.texts == s.test.texts  # deterministic


def test_local_csv_labels_named_from_data_and_head(tmp_path):
    path = write_csv(tmp_path / "d.csv", toy_rows(100))
    s = load_splits(DataConfig(dataset=str(path), max_train_examples=20))
    assert s.label_names == ["neg", "pos"]
    assert len(s.train) == 20 and len(s.validation) == 10 and len(s.test) == 10


def test_jsonl_with_explicit_columns(tmp_path):
    import json

    rows = toy_rows(60)
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"body": r["review"], "y": r["sentiment"]}) for r in rows))
    s = load_splits(DataConfig(dataset=str(path), text_column="body", label_column="y"))
    assert len(s.train) + len(s.validation) + len(s.test) == 60


def test_length_grouped_batches_cover_everything_once():
    lengths = [(i * 37) % 50 + 1 for i in range(1000)]
    batches = train_batches(lengths, 32, seed=1, epoch=0)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))
    assert batches == train_batches(lengths, 32, seed=1, epoch=0)
    assert batches != train_batches(lengths, 32, seed=1, epoch=1)
    # padding far below random batching
    pad = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    assert pad < 0.1 * sum(lengths)
    assert Counter(len(b) for b in eval_batches(lengths, 100))[100] == 10


def test_collate_pads_to_the_batch_not_a_global_max():
    tok = load_tokenizer("minilm")
    from tunelab.data import Split

    enc = encode(Split(["a b", "a much longer sentence here", "x"], None, [0, 1, 0]), tok, 128)
    batch = collate(enc, [0, 2], tok.pad_token_id)
    assert batch["input_ids"].shape[1] == max(enc.lengths[0], enc.lengths[2])
    assert batch["attention_mask"].sum().item() == enc.lengths[0] + enc.lengths[2]


def test_glue_like_folder_pairs_classlabel_hidden_test(tmp_path):
    """A dataset folder like GLUE's: sentence pairs, ClassLabel names, a test split whose labels
    are hidden (-1). Its validation split becomes the test split; validation is carved from
    train, never from test."""
    import datasets

    feats = datasets.Features(
        {
            "sentence1": datasets.Value("string"),
            "sentence2": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["no", "maybe", "yes"]),
        }
    )

    def part(n, prefix, labels):
        return datasets.Dataset.from_dict(
            {
                "sentence1": [f"{prefix} a {i}" for i in range(n)],
                "sentence2": [f"{prefix} b {i}" for i in range(n)],
                "label": labels,
            },
            features=feats if labels[0] != -1 else None,
        )

    part(90, "tr", [i % 3 for i in range(90)]).to_parquet(tmp_path / "train.parquet")
    part(12, "va", [i % 3 for i in range(12)]).to_parquet(tmp_path / "validation.parquet")
    part(5, "te", [-1] * 5).to_parquet(tmp_path / "test.parquet")
    s = load_splits(DataConfig(dataset=str(tmp_path)))
    assert s.label_names == ["no", "maybe", "yes"]
    assert s.test.texts[0].startswith("va") and len(s.test) == 12
    assert all(t.startswith("tr") for t in s.validation.texts) and len(s.validation) == 9
    assert s.train.pairs is not None and s.train.pairs[0].startswith("tr b")
    tok = load_tokenizer("minilm")
    enc = encode(s.train, tok, 32)
    assert enc.token_type_ids is not None and 1 in enc.token_type_ids[0]


def test_ddp_shards_use_every_example_once_and_weight_to_the_global_mean():
    """For any data size and process count: each example in exactly one process's part of
    one global batch; parts of a global batch differ by at most one example; the loss scales
    make the DDP average of the part means the global batch's mean; the epoch's step count
    is what step_budget plans."""
    from tunelab.batches import global_batches, shard_batches, train_batches

    for n in (1, 2, 3, 4):
        for size in (1, 2, 3, 5, 7, 8, 9, 17, 33, 64, 65, 101):
            lengths = [i % 13 + 1 for i in range(size)]
            b = 4
            batches = train_batches(lengths, b * n, seed=0, epoch=1)
            parts = [shard_batches(batches, n, r) for r in range(n)]
            steps = {len(p) for p in parts}
            assert len(steps) == 1, (n, size)  # every process takes the same number of steps
            seen = sorted(i for p in parts for idx, _ in p for i in idx)
            if size >= n:
                assert seen == list(range(size)), (n, size)
                assert steps.pop() == global_batches(size, b * n, n), (n, size)
            for k in range(len(parts[0])):
                sizes = [len(p[k][0]) for p in parts]
                assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
                total = sum(sizes)
                for p in parts:  # scale = n x part / global: the weights of a global mean
                    assert p[k][1] == pytest.approx(n * len(p[k][0]) / total)
