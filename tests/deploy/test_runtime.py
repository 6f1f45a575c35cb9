"""The ONNX runtime side without a model: what it refuses, the one-line errors that name the
pip command when an extra is missing, and its windowing of sentences for token classification."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from pretune.deploy.runtime import OnnxModel, is_export_dir
from pretune.errors import MissingExtraError, ModelError


def test_a_directory_without_an_export_is_refused_naming_the_command(tmp_path):
    assert not is_export_dir(tmp_path)
    with pytest.raises(ModelError, match="pretune export RUN --format onnx --output DIR"):
        OnnxModel(tmp_path)


def test_missing_extras_name_the_pip_command(tmp_path, monkeypatch):
    (tmp_path / "deploy.json").write_text("{}")
    (tmp_path / "model.onnx").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'pretune\[onnx\]'"):
        OnnxModel(tmp_path)
    from pretune.training.explain import _captum

    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'pretune\[explain\]'"):
        _captum()


def test_int8_without_the_quantized_copy_is_refused(tmp_path):
    (tmp_path / "deploy.json").write_text("{}")
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(ModelError, match="--quantize int8"):
        OnnxModel(tmp_path, int8=True)


@pytest.mark.parametrize("max_length,stride", [(10, 3), (16, 100), (512, 32), (9, 0)])
def test_word_windows_from_tokenizers_match_the_torch_paths(max_length, stride, tmp_path):
    """The runtime windows sentences with the tokenizers library alone exactly as training and
    torch prediction do through transformers: same token ids, windows and words read."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from pretune.data import tokens
    from pretune.deploy.runtime import word_windows
    from tests.conftest import minilm_dir
    from tests.ner_helpers import sentences

    fast = AutoTokenizer.from_pretrained(minilm_dir())
    fast.save_pretrained(tmp_path)  # as the export writes it
    words = [r["tokens"] for r in sentences(5, 4)] + [["Johnsmithsonian", "visited", "Zürich", "!"]]
    words.append(sum(words, []))
    mine = word_windows(Tokenizer.from_file(str(tmp_path / "tokenizer.json")), words,
                        max_length, stride)
    theirs = tokens.encode_words(words, None, fast, max_length, stride=stride)
    assert mine.encoded.input_ids == theirs.encoded.input_ids
    assert mine.rows.tolist() == theirs.rows.tolist()
    assert all(np.array_equal(a, b) for a, b in zip(mine.word_at, theirs.word_at))
    if max_length < 20:
        assert len(mine.rows) > len(words)  # long sentences were split
