"""Masking sensitive text (pretune.data.masking) and its place in text preprocessing."""

import pandas as pd
import pytest
import yaml
from transformers import AutoTokenizer
from transformers.models.bert import modeling_bert

from pretune.api import build_config
from pretune.data import text_prep
from pretune.data.masking import mask
from pretune.training.run import fit, predict


@pytest.mark.parametrize("text, expected", [
    ("write to jane.doe+news@mail.example.co.uk.", "write to [EMAIL]."),
    ("see https://example.com/a?b=1, or www.example.org!", "see [URL], or [URL]!"),
    ("call +1 (555) 123-4567 now", "call [PHONE] now"),
    ("ring 020 7946 0958 today", "ring [PHONE] today"),
    ("call 555.123.4567", "call [PHONE]"),
    ("card 4111 1111 1111 1111 expired", "card [NUMBER] expired"),
    ("account 12345678 closed", "account [NUMBER] closed"),
])
def test_each_kind_becomes_its_placeholder(text, expected):
    assert mask(text) == expected


@pytest.mark.parametrize("text", [
    "released in 1999, rated 3.5 of 10 by 1,000 fans",
    "on 2024-01-15 or 15.01.2024",
    "from 1995-2005",
    "version v1.2.3",
    "no personal data here",
])
def test_ordinary_numbers_dates_and_words_stay(text):
    assert mask(text) == text


def test_masking_runs_before_the_other_preprocessing_and_only_when_asked():
    texts = ["Mail ME at a@b.com"]
    assert text_prep.preprocess(texts, text_prep.TextOptions()) == texts
    assert text_prep.preprocess(texts, text_prep.TextOptions(mask_pii=True)) == ["Mail ME at [EMAIL]"]
    lowered = text_prep.preprocess(texts, text_prep.TextOptions(mask_pii=True, lowercase=True))
    assert lowered == ["mail me at [ email ]"]
    assert text_prep.TextOptions.from_settings({"data": {"mask_pii": True}}).mask_pii


PII_ROWS = [
    ("a wonderful film , write me at fan{i}@example.com", "positive"),
    ("great acting , see https://reviews.example.org/{i}", "positive"),
    ("a dull mess , call 020 7946 09{i:02d}", "negative"),
    ("awful plot , my account 99887766{i:02d}", "negative"),
]


@pytest.fixture
def pii_csv(tmp_path):
    rows = [(t.format(i=i), y) for i in range(4) for t, y in PII_ROWS]
    path = tmp_path / "pii.csv"
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, index=False)
    return path


def ids_seen(monkeypatch) -> list:
    """The token ids every forward pass of a BERT model embeds from now on, in one list."""
    seen = []
    original = modeling_bert.BertEmbeddings.forward

    def watching(self, input_ids=None, *args, **kwargs):
        if input_ids is not None:
            seen.extend(input_ids.tolist())
        return original(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(modeling_bert.BertEmbeddings, "forward", watching)
    return seen


def test_the_model_sees_placeholders_at_training_and_at_predict(tiny_model_dir, pii_csv,
                                                                tmp_path, monkeypatch):
    seen = ids_seen(monkeypatch)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    def texts_seen() -> str:
        return " ".join(tokenizer.decode(ids, skip_special_tokens=True) for ids in seen)

    config = build_config(None, dict(model=tiny_model_dir, train=str(pii_csv), epochs=1,
                                     batch_size=4, precision="fp32", threads=1, mask_pii=True,
                                     feature_cache=False))
    result = fit(config, tmp_path / "model")
    trained = texts_seen()
    for placeholder in ("[ email ]", "[ url ]", "[ phone ]", "[ number ]"):
        assert placeholder in trained
    assert "@" not in trained and "example" not in trained and "7946" not in trained

    meta = yaml.safe_load((result.path / "pretune.yaml").read_text())
    assert meta["settings"]["data"]["mask_pii"] is True
    seen.clear()
    predict(result.path, pii_csv)
    predicted = texts_seen()
    assert "[ email ]" in predicted and "[ phone ]" in predicted
    assert "@" not in predicted and "7946" not in predicted and "99887766" not in predicted


def test_without_mask_pii_the_model_sees_the_raw_text(tiny_model_dir, pii_csv, tmp_path,
                                                      monkeypatch):
    seen = ids_seen(monkeypatch)
    config = build_config(None, dict(model=tiny_model_dir, train=str(pii_csv), epochs=1,
                                     batch_size=4, precision="fp32", threads=1,
                                     feature_cache=False))
    fit(config)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert "@" in " ".join(tokenizer.decode(ids, skip_special_tokens=True) for ids in seen)
