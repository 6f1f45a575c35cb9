"""ONNX export of a token classification (NER) model: the export checks itself at every token of
the validation sentences' windows, and ONNX Runtime tags words (and finds entities) as the torch
model's ``pretune predict`` does, long sentences split into the same windows, without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("onnxruntime", reason="the onnx extra is needed: pip install 'pretune[onnx]'")
pytest.importorskip("onnxscript", reason="the onnx extra is needed: pip install 'pretune[onnx]'")

import pretune  # noqa: E402
from pretune.deploy.export import ExportCheckError, export_onnx  # noqa: E402
from pretune.deploy.runtime import INT8_FILE, OnnxModel  # noqa: E402
from pretune.deploy.runtime import predict as onnx_predict  # noqa: E402
from tests.deploy.helpers import export_cli  # noqa: E402
from tests.deploy.test_export import NO_TORCH  # noqa: E402
from tests.ner_helpers import sentences, write_conll, write_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# max_length 12 with stride 3: most sentences become several overlapping windows
TRAIN = dict(epochs=12, lr=3e-3, batch_size=8, threads=1, precision="fp32", warmup_ratio=0.0,
             max_length=12, stride=3)


@pytest.fixture(scope="module")
def ner_model(tiny_learner_dir, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ner-onnx")
    train = write_conll(d / "train.conll", sentences(48, 0))
    valid = write_jsonl(d / "valid.jsonl", sentences(16, 1))
    pretune.train(model=tiny_learner_dir, train=str(train), valid=str(valid), out=d / "m", **TRAIN)
    return d / "m"


@pytest.fixture(scope="module")
def exported(ner_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("ner-export") / "onnx"
    return export_onnx(ner_model, out, quantize="int8"), out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ner-inputs")
    rows = [{"tokens": r["tokens"]} for r in sentences(8, 2)]
    rows.append({"tokens": sum((r["tokens"] for r in sentences(3, 5)), [])})  # a long one
    raw = d / "raw.txt"
    raw.write_text("john smith lives in paris.\nyesterday ibm said mary visited new york\n")
    return {"words": write_jsonl(d / "words.jsonl", rows), "raw": raw}


def test_export_checks_every_token_and_records_the_tags(exported, ner_model):
    result, out = exported
    assert result.kind == "token"
    assert result.rows == 16  # the validation sentences, all of them
    assert 0 <= result.max_diff <= 1e-4
    assert 0.0 <= result.int8["agreement"] <= 1.0 and result.int8["max_diff"] >= 0.0
    info = json.loads((out / "deploy.json").read_text())
    labels = json.loads((ner_model / "config.json").read_text())["id2label"]
    assert info["kind"] == "token" and info["labels"] == [labels[str(i)] for i in range(len(labels))]
    assert (info["max_length"], info["stride"]) == (12, 3)
    assert {"tokenizer.json", "pretune.yaml", INT8_FILE} <= {p.name for p in out.iterdir()}
    model = OnnxModel(out)
    feed = model.feed([[101, 2198, 3044, 102], [101, 3000, 102]])
    assert model.logits(feed).shape == (2, 4, len(labels))  # logits per sub-token


def test_runtime_windows_are_the_torch_paths_windows(exported, ner_model):
    from transformers import AutoTokenizer

    from pretune.data import tokens

    _, out = exported
    words = [r["tokens"] for r in sentences(6, 3)] + [["johnsmithsonian", "visited", "berlin"]]
    words.append(sum(words[:4], []))
    mine = OnnxModel(out).windows(words)
    theirs = tokens.encode_words(words, None, AutoTokenizer.from_pretrained(ner_model), 12, stride=3)
    assert len(mine.rows) > len(words)  # windowed
    assert mine.encoded.input_ids == theirs.encoded.input_ids
    assert mine.rows.tolist() == theirs.rows.tolist()
    assert all(np.array_equal(a, b) for a, b in zip(mine.word_at, theirs.word_at))


@pytest.mark.parametrize("source", ["words", "raw"])
def test_onnx_predict_tags_as_torch(source, exported, ner_model, inputs):
    _, out = exported
    expected = pretune.predict(ner_model, inputs[source], entities=True)
    got = onnx_predict(out, inputs[source], entities=True)
    assert list(got.columns) == list(expected.columns)
    assert [list(p) for p in got["prediction"]] == [list(p) for p in expected["prediction"]]
    assert all(len(p) == len(w) for p, w in zip(got["prediction"], got["tokens"]))
    assert any(tag != "O" for p in got["prediction"] for tag in p)  # the model tags entities
    for mine, theirs in zip(got["entities"], expected["entities"]):
        assert [{k: e[k] for k in ("type", "start", "end", "text")} for e in mine] == \
            [{k: e[k] for k in ("type", "start", "end", "text")} for e in theirs]
        np.testing.assert_allclose([e["score"] for e in mine], [e["score"] for e in theirs],
                                   atol=2e-4)
    int8 = onnx_predict(out, inputs[source], int8=True)
    assert "entities" not in int8.columns
    assert [len(p) for p in int8["prediction"]] == [len(p) for p in expected["prediction"]]


def test_a_runtime_that_windows_differently_fails_the_check(ner_model, tmp_path, monkeypatch):
    real = OnnxModel.windows

    def fewer(self, words):  # as if the runtime lost the last word of each sentence
        return real(self, [w[:-1] for w in words])

    monkeypatch.setattr(OnnxModel, "windows", fewer)
    with pytest.raises(ExportCheckError, match="into the tokens the torch model reads"):
        export_onnx(ner_model, tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_cli_export_then_predict_entities_without_torch(ner_model, inputs, tmp_path):
    r, env = export_cli(ner_model, tmp_path / "onnx")
    assert r.returncode == 0, r.stderr
    assert "checked on 16 validation sentences: largest logit difference" in r.stderr
    assert "of tokens" in r.stderr
    for extra in ([], ["--int8"]):
        out = tmp_path / f"tags{len(extra)}.jsonl"
        r = subprocess.run([sys.executable, "-c", NO_TORCH, "predict", "--onnx", tmp_path / "onnx",
                            "--input", inputs["raw"], "--entities", "--output", out, *extra],
                           capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        rows = pd.read_json(out, lines=True)
        assert rows["tokens"][0] == ["john", "smith", "lives", "in", "paris", "."]
        assert all(len(p) == len(w) for p, w in zip(rows["prediction"], rows["tokens"]))
        text = inputs["raw"].read_text().splitlines()
        for line, found in zip(text, rows["entities"]):
            assert all(line[e["start"]:e["end"]] == e["text"] for e in found)
