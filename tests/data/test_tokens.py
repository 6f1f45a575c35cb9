"""Token classification data: detection, CoNLL files, tag schemes, word-to-token alignment."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pretune.config import DataConfig
from pretune.data import tokens
from pretune.data.readers import read_table
from pretune.data.task import load_task, task_of
from pretune.errors import DataError
from tests.conftest import minilm_dir
from tests.ner_helpers import sentences, write_conll, write_jsonl


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


def test_jsonl_with_word_and_tag_lists_is_a_token_task(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", sentences(30, 0))
    task = load_task(DataConfig(train=str(train)), seed=0)
    assert task.kind == "token" and task.scheme == "IOB2"
    assert task.label_names[0] == "O"
    assert set(task.label_names) == {"O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"}
    row = task.train.words[0]
    assert len(task.train.labels[0]) == len(row)
    assert task.train.texts[0] == " ".join(row)
    assert len(task.train) + len(task.valid) == 30  # 10% held out without --valid
    assert task_of(DataConfig(train=str(train))) == "token"


@pytest.mark.parametrize("words, tags", [("words", "ner_tags"), ("tokens", "labels")])
def test_other_column_names_are_detected(tmp_path, words, tags):
    rows = [{words: r["tokens"], tags: r["tags"]} for r in sentences(20, 0)]
    pd.DataFrame(rows).to_parquet(tmp_path / "train.parquet")
    task = load_task(DataConfig(train=str(tmp_path / "train.parquet")), seed=0)
    assert (task.kind, task.text_column, task.label_column) == ("token", words, tags)


def test_columns_named_by_flags(tmp_path):
    rows = [{"w": r["tokens"], "t": r["tags"], "lang": "en"} for r in sentences(20, 0)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    task = load_task(DataConfig(train=str(tmp_path / "train.jsonl"), text_column="w",
                                label_column="t"), seed=0)
    assert (task.kind, task.text_column, task.label_column) == ("token", "w", "t")


def test_conll_file_is_read_as_sentences(tmp_path):
    rows = sentences(5, 0)
    path = write_conll(tmp_path / "train.conll", rows)
    frame = read_table(path)
    assert frame["tokens"].tolist() == [r["tokens"] for r in rows]
    assert frame["tags"].tolist() == [r["tags"] for r in rows]  # the last field is the tag
    # the same lines in a .txt file read the same; other .txt files are one text per line
    txt = tmp_path / "train.txt"
    txt.write_text(path.read_text())
    assert read_table(txt)["tags"].tolist() == frame["tags"].tolist()
    raw = tmp_path / "raw.txt"
    raw.write_text("John lives in Paris\n\nMary too\n")
    assert read_table(raw)["text"].tolist() == ["John lives in Paris", "Mary too"]


def test_dataset_with_classlabel_tags_is_named(tmp_path):
    datasets = pytest.importorskip("datasets")
    names = ["O", "B-PER", "I-PER", "B-LOC"]
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names))})
    data = datasets.Dataset.from_dict(
        {"tokens": [["Peter", "Smith", "ran"], ["Paris", "won"]] * 5,
         "ner_tags": [[1, 2, 0], [3, 0]] * 5}, features=features)
    data.save_to_disk(str(tmp_path / "ds"))
    task = load_task(DataConfig(train=str(tmp_path / "ds")), seed=0)
    assert task.kind == "token"
    tags = {task.label_names[i] for row in list(task.train.labels) + list(task.valid.labels)
            for i in row}
    assert tags == {"O", "B-PER", "I-PER", "B-LOC"}


@pytest.mark.parametrize("tags, scheme", [
    ([["B-PER", "I-PER", "O", "B-LOC"]], "IOB2"),
    ([["I-PER", "I-PER", "O", "I-LOC", "B-LOC"]], "IOB1"),  # I- starts entities
    ([["B-PER", "E-PER", "O", "S-LOC"]], "BIOES"),
])
def test_tag_schemes(tags, scheme):
    assert tokens.scheme_of(tags) == scheme


def test_unknown_scheme_names_the_tag():
    with pytest.raises(DataError, match="'PERSON'.*IOB2|IOB1, IOB2 or BIOES.*'PERSON'"):
        tokens.scheme_of([["O", "PERSON"]])


def test_length_mismatch_names_the_row(tmp_path):
    rows = sentences(4, 0)
    rows[2] = {"tokens": rows[2]["tokens"], "tags": rows[2]["tags"][:-1]}
    write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(DataError, match="row 3 has"):
        load_task(DataConfig(train=str(tmp_path / "t.jsonl")), seed=0)


def test_valid_tags_must_be_known(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", sentences(10, 0))
    valid = write_jsonl(tmp_path / "valid.jsonl", [{"tokens": ["Bonn"], "tags": ["B-CITY"]}])
    with pytest.raises(DataError, match="B-CITY"):
        load_task(DataConfig(train=str(train), valid=str(valid)), seed=0)


def test_first_subtoken_carries_the_tag(tokenizer):
    words = [["johnsmithson", "lives", "in", "paris"]]
    windows = tokens.encode_words(words, [np.array([1, 0, 0, 3])], tokenizer, 64)
    enc = windows.encoded
    ids = enc.input_ids[0]
    labels = enc.labels[0]
    assert len(labels) == len(ids)
    tagged = [(tokenizer.convert_ids_to_tokens(i), int(y)) for i, y in zip(ids, labels)]
    assert tagged[0] == ("[CLS]", -100) and tagged[-1] == ("[SEP]", -100)
    pieces = tokenizer.tokenize("johnsmithson")
    assert len(pieces) > 1  # a word of several sub-tokens
    assert [y for _, y in tagged[1:1 + len(pieces)]] == [1] + [-100] * (len(pieces) - 1)
    assert [y for y in labels if y != -100] == [1, 0, 0, 3]


def test_label_all_subtokens_turns_b_into_i(tokenizer):
    names = ["O", "B-PER", "I-PER"]
    windows = tokens.encode_words([["johnsmithson", "ran"]], [np.array([1, 0])], tokenizer, 64,
                                  all_subtokens=True, inside=tokens.inside_tags(names))
    labels = windows.encoded.labels[0]
    n = len(tokenizer.tokenize("johnsmithson"))
    assert labels[1:1 + n].tolist() == [1] + [2] * (n - 1)
    assert (windows.word_at[0] >= 0).sum() == 2  # predictions still read one token per word


def test_long_sentence_is_split_with_stride_and_every_word_read_once(tokenizer):
    words = [[f"w{i}" for i in range(40)], ["short", "one"]]
    tags = [np.arange(40) % 3, np.array([1, 2])]
    windows = tokens.encode_words(words, tags, tokenizer, 16, stride=4)
    assert (windows.rows == 0).sum() > 2 and (windows.rows == 1).sum() == 1
    assert max(len(ids) for ids in windows.encoded.input_ids) <= 16
    for row, sentence in enumerate(words):
        read = np.concatenate([at[at >= 0] for at, r in zip(windows.word_at, windows.rows)
                               if r == row])
        assert sorted(read.tolist()) == list(range(len(sentence)))  # each word once, none lost
    labelled = np.concatenate([lab[lab != -100] for lab, r in
                               zip(windows.encoded.labels, windows.rows) if r == 0])
    assert len(labelled) == 40
    # the windows' per-token outputs merge back to one row per word, in order
    probs = np.zeros((len(windows.rows), 16, 3), dtype=np.float32)
    for w, at in enumerate(windows.word_at):
        for p in np.flatnonzero(at >= 0):
            probs[w, p, int(tags[windows.rows[w]][at[p]])] = 1.0
    merged = tokens.word_predictions(windows, probs, [40, 2])
    assert merged[0].argmax(axis=1).tolist() == tags[0].tolist()
    assert merged[1].argmax(axis=1).tolist() == [1, 2]


def test_split_words_follows_conll_tokenization():
    assert tokens.split_words("EU rejects German call, U.S. says.") == [
        "EU", "rejects", "German", "call", ",", "U.S", ".", "says", "."]


def test_train_rows_samples_sentences(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", sentences(50, 0))
    valid = write_jsonl(tmp_path / "valid.jsonl", sentences(5, 1))
    task = load_task(DataConfig(train=str(train), valid=str(valid), train_rows=20), seed=0)
    assert len(task.train) == 20 and len(task.valid) == 5
    again = load_task(DataConfig(train=str(train), valid=str(valid), train_rows=20), seed=0)
    assert again.fingerprint == task.fingerprint
    assert json.dumps(again.train.words) == json.dumps(task.train.words)


def test_integer_tags_are_named_by_label_names(tmp_path):
    rows = [{"tokens": ["Peter", "Smith", "ran"], "tags": [1, 2, 0]},
            {"tokens": ["Paris", "won"], "tags": [3, 0]}] * 5
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match="--label-names"):
        load_task(DataConfig(train=str(train)), seed=0)
    task = load_task(DataConfig(train=str(train), label_names="O,B-PER,I-PER,B-LOC"), seed=0)
    assert set(task.label_names) == {"O", "B-PER", "I-PER", "B-LOC"}
    with pytest.raises(DataError, match="ids of the 3 tag names"):
        load_task(DataConfig(train=str(train), label_names="O,B-PER,I-PER"), seed=0)


def test_entity_spans_have_character_offsets_and_scores():
    text = "Peter  Smith flew to New York."
    words = ["Peter", "Smith", "flew", "to", "New", "York", "."]
    tags = ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "O"]
    spans = tokens.entity_spans(text, words, tags, [0.9, 0.7, 1, 1, 0.8, 0.6, 1])
    assert spans == [
        {"type": "PER", "start": 0, "end": 12, "text": "Peter  Smith", "score": 0.8},
        {"type": "LOC", "start": 21, "end": 29, "text": "New York", "score": 0.7},
    ]
    bioes = tokens.entity_spans("a b c", ["a", "b", "c"], ["S-X", "B-Y", "E-Y"], [1, 1, 1])
    assert [(s["type"], s["text"]) for s in bioes] == [("X", "a"), ("Y", "b c")]


def test_conll_valid_beside_a_table_with_other_column_names(tmp_path):
    rows = [{"words": r["tokens"], "ner_tags": r["tags"]} for r in sentences(20, 0)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    valid = write_conll(tmp_path / "valid.conll", sentences(5, 1))
    task = load_task(DataConfig(train=str(train), valid=str(valid)), seed=0)
    assert len(task.valid) == 5 and task.valid_source == "file"
