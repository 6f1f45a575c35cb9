"""ONNX export: every task and head pretune saves exports, checks itself against torch, and
predicts through ONNX Runtime what the torch model predicts; an export that does not compute
what torch computes is refused before anything is written."""

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

from pretune.deploy.export import ExportCheckError, export_onnx  # noqa: E402
from pretune.deploy.runtime import INT8_FILE, OnnxModel  # noqa: E402
from pretune.training.run import predict as torch_predict  # noqa: E402
from tests.deploy.helpers import CASES, export_cli, train_case  # noqa: E402
from tests.image_helpers import build_tiny_vit_dir, write_square_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_vit_dir(tmp_path_factory) -> str:
    return str(build_tiny_vit_dir(tmp_path_factory.mktemp("tiny-vit")))


@pytest.fixture(scope="module")
def trained(tiny_learner_dir, tiny_vit_dir, tmp_path_factory):
    """name -> a trained model directory, built on first use."""
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = train_case(name, tmp_path_factory.mktemp(name), tiny_learner_dir,
                                    tiny_vit_dir)
        return made[name]

    return get


def _inputs(name: str, model_dir: Path, tmp: Path) -> str:
    """A file (or folder) to predict on for case ``name``: new rows, not the training ones."""
    if name == "image":
        return str(write_square_folder(tmp / "new-images", per_class=3, seed=7))
    frame = {"pair": pd.DataFrame({"question": ["is it good ?", "was it bad ?"],
                                   "answer": ["a joyful ride", "i hated every minute of it"]}),
             }.get(name, pd.DataFrame({"text": ["a warm and funny film", "the match and the song",
                                                "poor plain superb", "stupid , tedious waste"]}))
    path = tmp / "new.csv"
    frame.to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize("name", list(CASES))
def test_export_checks_itself_and_predicts_as_torch(name, trained, tmp_path):
    model_dir = trained(name)
    result = export_onnx(model_dir, tmp_path / "onnx")
    assert result.rows > 0 and result.max_diff <= 1e-4
    onnx_dir = tmp_path / "onnx"
    info = json.loads((onnx_dir / "deploy.json").read_text())
    assert info["modality"] == ("image" if name == "image" else "text")
    assert (onnx_dir / ("preprocessor_config.json" if name == "image" else "tokenizer.json")).is_file()

    source = _inputs(name, model_dir, tmp_path)
    expected = torch_predict(model_dir, source)
    got = OnnxModel(onnx_dir)
    from pretune.deploy.runtime import predict as onnx_predict

    frame = onnx_predict(onnx_dir, source)
    assert list(frame.columns) == list(expected.columns)
    if name != "regression":  # labels (or label lists) the same; values below
        assert frame["prediction"].map(str).tolist() == expected["prediction"].map(str).tolist()
    numeric = [c for c in expected.columns if c.startswith("prob_")] or ["prediction"]
    np.testing.assert_allclose(frame[numeric].to_numpy(float), expected[numeric].to_numpy(float),
                               atol=1e-4)
    assert got.kind == {"regression": "regression", "multilabel": "multilabel"}.get(name, "classification")


def test_int8_copy_is_written_measured_and_used(trained, tmp_path):
    model_dir = trained("mlp-mean-layernorm")
    result = export_onnx(model_dir, tmp_path / "onnx", quantize="int8")
    assert (tmp_path / "onnx" / INT8_FILE).is_file()
    assert 0.0 <= result.int8["agreement"] <= 1.0 and result.int8["max_diff"] >= 0.0
    fp32 = OnnxModel(tmp_path / "onnx")
    int8 = OnnxModel(tmp_path / "onnx", int8=True)
    feed = fp32.encode(["a wonderful , moving film", "a dull , boring mess"])
    # a different graph: quantized weights change the logits a little, not the shape
    assert int8.logits(feed).shape == fp32.logits(feed).shape
    assert not np.array_equal(int8.logits(feed), fp32.logits(feed))


def test_an_export_that_differs_from_torch_is_refused_and_not_written(trained, tmp_path, monkeypatch):
    model_dir = trained("linear")
    real = OnnxModel.logits
    monkeypatch.setattr(OnnxModel, "logits", lambda self, feed: real(self, feed) + 0.01)
    with pytest.raises(ExportCheckError, match="within 0.0001"):
        export_onnx(model_dir, tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()
    assert not list(tmp_path.glob("onnx.tmp-*"))


NO_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, NoTorch())
from pretune.cli.main import app
try:
    app(sys.argv[1:])
finally:
    assert "torch" not in sys.modules
"""


def test_cli_export_then_predict_without_torch(trained, tmp_path):
    model_dir = trained("linear")
    r, env = export_cli(model_dir, tmp_path / "onnx")
    assert r.returncode == 0, r.stderr
    assert "largest logit difference torch vs ONNX Runtime" in r.stderr
    assert "(tolerance 0.0001)" in r.stderr and "int8 copy:" in r.stderr
    source = _inputs("linear", model_dir, tmp_path)
    for extra in ([], ["--int8"]):
        out = tmp_path / f"preds{len(extra)}.csv"
        r = subprocess.run([sys.executable, "-c", NO_TORCH, "predict", "--onnx", tmp_path / "onnx",
                            "--input", source, "--output", out, *extra],
                           capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        frame = pd.read_csv(out)
        assert len(frame) == 4 and set(frame["prediction"]) <= {"negative", "positive"}
    # an export directory given as MODEL is recognised without --onnx
    r = subprocess.run([sys.executable, "-c", NO_TORCH, "predict", tmp_path / "onnx", "--input", source],
                       capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("text,prediction,prob_negative,prob_positive")


def test_cli_check_failure_and_bad_flags_are_one_line_exit_2(trained, tmp_path, monkeypatch):
    from tests.search.helpers import cli

    model_dir = trained("linear")
    real = OnnxModel.logits
    monkeypatch.setattr(OnnxModel, "logits", lambda self, feed: real(self, feed) + 1.0)
    r = cli("export", model_dir, "--format", "onnx", "--output", tmp_path / "onnx")
    assert r.exit_code == 2
    assert "must give the torch model's logits within 0.0001" in r.output
    assert "Traceback" not in r.output
    r = cli("export", model_dir, "--format", "onnx")
    assert r.exit_code == 2 and "Pass --output DIR" in r.output
    r = cli("export", model_dir, "--format", "onnx", "--output", tmp_path / "x", "--quantize", "int4")
    assert r.exit_code == 2 and "--quantize must be int8" in r.output
    r = cli("predict", "--onnx", model_dir, "--input", tmp_path / "none.csv")
    assert r.exit_code == 2 and "pretune export RUN --format onnx" in r.output
