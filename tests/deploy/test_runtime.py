"""The ONNX runtime side without a model: what it refuses and the one-line errors that name
the pip command when an extra is missing."""

from __future__ import annotations

import sys

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
