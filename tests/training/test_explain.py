"""pretune explain's attributions: one record per row, the row's own tokens, weights on one
scale, complete integrals (Captum's delta), labels read and misclassified rows first."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("captum", reason="the explain extra is needed: pip install 'pretune[explain]'")

from pretune.training.explain import Explained, explain, order, top_tokens  # noqa: E402
from tests.deploy.helpers import train_case  # noqa: E402


@pytest.fixture(scope="module")
def models(tiny_learner_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    return {name: train_case(name, root / name, tiny_learner_dir, "")
            for name in ("mlp-mean-layernorm", "pair")}


def test_each_row_gets_its_tokens_and_weights_toward_the_prediction(models, tmp_path):
    source = tmp_path / "rows.csv"
    pd.DataFrame({"text": ["a wonderful , moving film", "the worst film of the year", "dull"],
                  "label": ["positive", "negative", "positive"]}).to_csv(source, index=False)
    rows = explain(models["mlp-mean-layernorm"], source, steps=16)
    assert [r.row for r in rows] == [0, 1, 2]
    assert rows[0].tokens == ["a", "wonderful", ",", "moving", "film"]  # no [CLS]/[SEP]
    for r in rows:
        assert len(r.weights) == len(r.tokens)
        assert max(abs(w) for w in r.weights) == pytest.approx(1.0, abs=1e-3)
        assert r.prediction in ("negative", "positive") and 0.5 <= r.confidence <= 1.0
        assert math.isfinite(r.delta)
    assert [r.label for r in rows] == ["positive", "negative", "positive"]
    assert [r.misclassified for r in rows] == [r.prediction != r.label for r in rows]


def test_limit_and_pairs(models, tmp_path):
    source = tmp_path / "pairs.csv"
    pd.DataFrame({"question": ["is it good ?"] * 3, "answer": ["a wonderful film", "a dull mess", "yes"],
                  "label": ["yes", "no", "yes"]}).to_csv(source, index=False)
    rows = explain(models["pair"], source, limit=2, steps=8)
    assert len(rows) == 2
    assert rows[0].pair == "a wonderful film"
    assert rows[0].first_tokens == 4  # "is it good ?" then the answer's tokens
    assert rows[0].tokens[4:] == ["a", "wonderful", "film"]


def test_images_get_a_weight_per_pixel_and_labels_from_class_folders(tiny_learner_dir, tmp_path):
    from tests.image_helpers import build_tiny_vit_dir, write_square_folder

    vit = build_tiny_vit_dir(tmp_path / "vit")
    model = train_case("image", tmp_path / "image", tiny_learner_dir, str(vit))
    folder = write_square_folder(tmp_path / "new", per_class=2, seed=3)
    rows = explain(model, folder, steps=8)
    assert len(rows) == 4
    for r in rows:
        assert r.pixels.shape == (3, 32, 32) and r.heatmap.shape == (32, 32)
        assert abs(r.heatmap).max() == pytest.approx(1.0, abs=1e-3)
        assert r.label == Path(r.text).parent.name in ("red", "blue")
        assert r.prediction in ("red", "blue") and r.tokens == []


@pytest.mark.parametrize("name", ["regression", "multilabel"])
def test_regression_explains_the_value_and_multilabel_its_top_label(name, tiny_learner_dir, tmp_path):
    model = train_case(name, tmp_path / name, tiny_learner_dir, "")
    source = tmp_path / "rows.csv"
    pd.DataFrame({"text": ["superb good plain", "the team sang a song"]}).to_csv(source, index=False)
    rows = explain(model, source, steps=8)
    assert len(rows) == 2 and all(r.misclassified is None for r in rows)
    for r in rows:
        assert max(abs(w) for w in r.weights) == pytest.approx(1.0, abs=1e-3)
        if name == "regression":
            assert r.confidence is None and math.isfinite(float(r.prediction))
        else:
            assert r.prediction in ("sports", "music") and 0.0 < r.confidence < 1.0


def _row(i, confidence, label, prediction="a"):
    return Explained(i, f"t{i}", None, ["x", "y"], [0.5, -1.0], prediction, confidence, label)


def test_order_puts_misclassified_first_then_confidence():
    rows = [_row(0, 0.6, "a"), _row(1, 0.9, "a"), _row(2, 0.7, "b"), _row(3, 0.95, "b")]
    assert [r.row for r in order(rows)] == [3, 2, 1, 0]
    unlabelled = [_row(0, 0.6, None), _row(1, 0.9, None)]
    assert [r.row for r in order(unlabelled)] == [1, 0]


def test_top_tokens_join_word_pieces():
    r = Explained(0, "t", None, ["un", "##bear", "##able", "film"], [-0.5, -0.25, 0.05, 1.0], "neg", 0.9)
    assert top_tokens(r, sign=-1) == [("unbearable", pytest.approx(-0.7))]
    assert top_tokens(r) == [("film", 1.0)]


def test_top_tokens_for_and_against():
    r = Explained(0, "t", None, ["good", "bad", "the"], [1.0, -0.8, 0.1], "pos", 0.9)
    assert top_tokens(r) == [("good", 1.0), ("the", 0.1)]
    assert top_tokens(r, sign=-1) == [("bad", -0.8)]
