"""Exporting a trained model to ONNX, with an int8 copy on request, and checking the export.

``export_onnx(run, out)`` loads the model in ``best/`` (or any pretune model directory) as
``pretune predict`` does (safetensors, the MLP head and pooling rebuilt without remote code),
traces it with ``torch.onnx.export`` (the dynamo exporter: batch and sequence length stay
dynamic), and writes the directory ``pretune.deploy.runtime`` reads. A text graph takes
``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the tokenizer makes them); an
image graph takes uint8 ``pixels`` (n, 3, height, width) and scales and normalizes them itself,
so that the runtime needs no torch. Every graph's output is ``logits``: (n, labels), or for
a token classification model (n, tokens, tags), a row of logits per sub-token.

The export checks itself before it is moved into place: on (a sample of) the run's validation
rows, the torch model's logits and ONNX Runtime's (through the runtime's own tokenizer and
image decoding) must agree within ``tolerance``; else ``ExportCheckError``. A token
classification model is checked at every token of its validation sentences, windowed by
``pretune predict``'s code (transformers) on the torch side and by the runtime's (``tokenizers``)
on the other, so the check covers the windowing too. The int8 copy
(``onnxruntime.quantization.quantize_dynamic``, int8 weights with a scale per output channel:
on the SST-2 MiniLM it kept test accuracy within 0.1 point where one scale per tensor lost 0.8)
is lossy by design: its largest logit difference
and its agreement with the torch predictions are measured and reported, not enforced.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pretune.deploy.runtime import (DEPLOY_FILE, FORMAT, FP32_FILE, INT8_FILE, OnnxModel, padded,
                                    prepare_texts)
from pretune.errors import MissingExtraError, PretuneError

logger = logging.getLogger(__name__)

CHECK_BATCH = 16


class ExportCheckError(PretuneError):
    """The exported graph does not compute what the torch model computes."""


@dataclass
class ExportResult:
    """What ``export_onnx`` wrote and measured."""

    path: Path
    rows: int  # validation rows (token classification: sentences) checked
    tolerance: float
    max_diff: float  # largest |torch - onnx| logit over the checked rows
    int8: dict[str, float] = field(default_factory=dict)  # max_diff, agreement (when quantized)
    kind: str = "classification"  # the task; token: rows are sentences, agreement is per token


def _need(module: str, extra: str = "onnx"):
    try:
        return __import__(module)
    except ImportError:
        raise MissingExtraError(module, extra, "Exporting to ONNX") from None


def _text_graph(model, names: list[str]):
    """``model`` with its inputs as positional tensors named ``names`` and its logits as the one
    output."""
    import torch

    class TextLogits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *inputs):
            return self.inner(**dict(zip(names, inputs))).logits

    return TextLogits(model).eval()


def _image_graph(model, spec):
    """``model`` behind uint8 pixels: scaled to [0, 1] and normalized as training did."""
    import torch

    from pretune.data.images import normalize

    class ImageLogits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixels):
            return self.inner(pixel_values=normalize(pixels.float() / 255.0, spec)).logits

    return ImageLogits(model).eval()


def text_input_names(model, tokenizer) -> list[str]:
    """The graph's inputs: token type ids only where the model takes them and the tokenizer
    makes them (as ``pretune.data.tokenize.encode`` feeds the model)."""
    takes = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in takes and "token_type_ids" in getattr(tokenizer, "model_input_names", ()):
        names.append("token_type_ids")
    return names


def _trace(graph, example: tuple, names: list[str], dynamic: tuple, file: Path) -> None:
    """``torch.onnx.export`` (dynamo) of ``graph`` on ``example``, the axes in ``dynamic``
    (torch.export's ``dynamic_shapes``, by position) left dynamic. A graph torch cannot export
    is an ExportCheckError."""
    import torch

    _need("onnxscript")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed"
    try:
        with torch.no_grad():
            torch.onnx.export(graph, example, str(file), dynamo=True, input_names=names,
                              output_names=["logits"], dynamic_shapes=dynamic,
                              verbose=False, report=False, external_data=_large(graph))
    except Exception as err:  # torch.export's errors have no common public base
        lines = [line for line in str(err).splitlines() if line.strip()]
        at = next((i + 1 for i, line in enumerate(lines) if "Exception summary" in line), 0)
        first = lines[at] if at < len(lines) else type(err).__name__
        raise ExportCheckError(
            f"torch.onnx.export must trace the model, but it failed ({first[:300]}). Run with "
            f"PRETUNE_DEBUG=1 for the trace, or export a model of another architecture."
        ) from err


def _large(graph) -> bool:
    """Whether the weights need ONNX's external data file (a protobuf holds 2 GB at most);
    smaller models are one file."""
    return sum(p.numel() * p.element_size() for p in graph.parameters()) > 1.5 * 2**30


def _deploy_info(meta: dict, model, kind: str, modality: str, **extra) -> dict[str, Any]:
    id2label = model.config.id2label
    labels = meta.get("labels") or [str(id2label.get(i, id2label.get(str(i), i)))
                                    for i in range(model.config.num_labels)]
    task = meta.get("task") or {}
    return {"format": FORMAT, "modality": modality, "kind": kind, "labels": list(map(str, labels)),
            "threshold": task.get("threshold", 0.5), "target_mean": task.get("target_mean", 0.0),
            "target_std": task.get("target_std", 1.0), "columns": meta.get("columns") or {},
            "settings": meta.get("settings") or {}, "model_type": model.config.model_type, **extra}


def _check_rows(meta: dict, rows: int):
    """The run's validation split (as ``load_task`` rebuilds it), sampled to ``rows``."""
    from pretune.config import RunConfig
    from pretune.training.run import data_seed
    from pretune.data.task import load_task

    settings = meta.get("settings")
    if not settings:
        raise PretuneError(
            "The export checks the model on its validation rows, but its pretune.yaml records no "
            "settings to find them. Export a model directory written by pretune train or tune."
        )
    config = RunConfig.from_dict(settings)
    try:
        task = load_task(config.data, data_seed(config))
    except PretuneError as err:
        raise type(err)(
            f"The export checks the model on the run's validation rows, which could not be read "
            f"({err}) Make the training data readable at the paths in pretune.yaml."
        ) from None
    valid = task.valid
    if len(valid) > rows:
        valid = valid.subset(np.sort(np.random.default_rng(0).choice(len(valid), rows, replace=False)))
    return task, valid


def _torch_logits_text(model, tokenizer, names, texts, pairs, max_length) -> np.ndarray:
    import torch

    out = []
    for s in range(0, len(texts), CHECK_BATCH):
        batch = tokenizer(texts[s:s + CHECK_BATCH],
                          None if pairs is None else pairs[s:s + CHECK_BATCH],
                          truncation="longest_first", max_length=max_length, padding=True,
                          return_tensors="pt", return_token_type_ids="token_type_ids" in names)
        with torch.no_grad():
            out.append(model(**{k: batch[k] for k in names}).logits.float().numpy())
    return np.concatenate(out)


def _torch_logits_windows(model, names, ids, pad_id: int) -> np.ndarray:
    """The torch logits (tokens, tags) at every token of the token windows ``ids``, window
    after window, batched as ``_onnx_logits`` batches them."""
    import torch

    out = []
    for s in range(0, len(ids), CHECK_BATCH):
        feed = padded(ids[s:s + CHECK_BATCH], pad_id)
        with torch.no_grad():
            logits = model(**{k: torch.from_numpy(feed[k]) for k in names}).logits.float().numpy()
        out.append(logits[feed["attention_mask"] == 1])
    return np.concatenate(out)


def _onnx_logits(onnx: OnnxModel, texts=None, pairs=None, paths=None, sentences=None) -> np.ndarray:
    if sentences is not None:  # (tokens, tags) at every token of the sentences' windows
        ids = onnx.windows(sentences).encoded.input_ids
        feeds = [onnx.feed(ids[s:s + CHECK_BATCH]) for s in range(0, len(ids), CHECK_BATCH)]
        return np.concatenate([onnx.logits(f)[f["attention_mask"] == 1] for f in feeds])
    return np.concatenate([onnx.logits(feed) for feed in _plain_batches(onnx, texts, pairs, paths)])


def _plain_batches(onnx: OnnxModel, texts, pairs, paths):
    """Batches in the given order (the check compares row by row)."""
    if paths is not None:
        for s in range(0, len(paths), CHECK_BATCH):
            yield {onnx.input_names[0]: onnx.pixels(paths[s:s + CHECK_BATCH])}
        return
    for s in range(0, len(texts), CHECK_BATCH):
        yield onnx.encode(texts[s:s + CHECK_BATCH],
                          None if pairs is None else pairs[s:s + CHECK_BATCH])


def export_onnx(model_path: str | os.PathLike, out: str | os.PathLike, *,
                quantize: str | None = None, rows: int = 64, tolerance: float = 1e-4,
                allow_pickle: bool = False) -> ExportResult:
    """Export the model at ``model_path`` (a run or model directory) to the directory ``out``;
    with ``quantize="int8"`` also a dynamically quantized copy. Checked on up to ``rows``
    validation rows (sentences, for token classification) before ``out`` is written;
    ``ExportCheckError`` when the logits differ by more than ``tolerance``."""
    from pretune.models.io import META_FILE, load_model_dir, resolve_model_dir, swap_in

    _need("onnx")
    directory = resolve_model_dir(model_path)
    model, processor, meta = load_model_dir(directory, allow_pickle=allow_pickle)
    model.to("cpu").float().eval()
    task, valid = _check_rows(meta, rows)
    kind = (meta.get("task") or {}).get("kind") or task.kind
    target = Path(out).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if kind == "token":
            expected, check = _export_tokens(model, processor, meta, valid, tmp)
        elif hasattr(processor, "pad_token_id"):
            expected, check = _export_text(model, processor, meta, kind, valid, tmp)
        else:
            expected, check = _export_image(model, processor, meta, kind, valid, tmp)
        shutil.copy2(directory / META_FILE, tmp / META_FILE)
        got = _onnx_logits(OnnxModel(tmp), **check)
        diff = _compare(got, expected, tolerance, len(valid), kind, model.config.model_type)
        result = ExportResult(target, len(valid), tolerance, diff, kind=kind)
        if quantize:
            result.int8 = _quantize(tmp, expected, check, kind)
        swap_in(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _compare(got: np.ndarray, expected: np.ndarray, tolerance: float, rows: int, kind: str,
             model_type: str) -> float:
    """The largest logit difference between ONNX Runtime (``got``) and torch (``expected``) on
    the ``rows`` checked; ExportCheckError above ``tolerance``."""
    what = "sentences" if kind == "token" else "rows"
    if got.shape != expected.shape:  # token windows: the runtime tokenized differently
        raise ExportCheckError(
            f"The ONNX runtime must split the {rows} validation {what} into the tokens the torch "
            f"model reads, but it made {len(got)} tokens where torch made {len(expected)}. "
            f"Export a model whose tokenizer.json gives the same tokens as its tokenizer."
        )
    diff = float(np.abs(got - expected).max()) if got.size else 0.0
    if not diff <= tolerance:
        raise ExportCheckError(
            f"The ONNX model must give the torch model's logits within {tolerance:g} on the "
            f"validation {what}, but they differ by up to {diff:.3g} on {rows} {what}. "
            f"Check the model type ({model_type}) exports with torch.onnx, or "
            f"pass --tolerance {10 ** np.ceil(np.log10(diff)):g} to accept it."
        )
    return diff


def _export_text(model, tokenizer, meta, kind, valid, tmp: Path):
    """Trace a text model into ``tmp``; return the torch logits of ``valid`` and the runtime's
    view of those rows (preprocessed texts and pairs)."""
    names, max_length = _trace_text(model, tokenizer, meta, kind, tmp, pairs=valid.pairs is not None)
    info = json.loads((tmp / DEPLOY_FILE).read_text(encoding="utf-8"))
    texts, pairs = prepare_texts(info, valid.texts, valid.pairs)
    expected = _torch_logits_text(model, tokenizer, names, texts, pairs, max_length)
    return expected, {"texts": texts, "pairs": pairs}


def _export_tokens(model, tokenizer, meta, valid, tmp: Path):
    """Trace a token classification model (logits per sub-token) into ``tmp``; return the
    torch logits at every token of ``valid``'s sentences, windowed as ``pretune predict``
    windows them, and the sentences (the runtime windows them itself)."""
    from pretune.data import tokens

    stride = int(((meta.get("settings") or {}).get("data") or {}).get("stride", 32))
    names, max_length = _trace_text(model, tokenizer, meta, "token", tmp, pairs=False,
                                    stride=stride)
    windows = tokens.encode_words(valid.words, None, tokenizer, max_length, stride=stride)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    expected = _torch_logits_windows(model, names, windows.encoded.input_ids, int(pad))
    return expected, {"sentences": valid.words}


def _trace_text(model, tokenizer, meta, kind, tmp: Path, *, pairs: bool, **extra
                ) -> tuple[list[str], int]:
    """Write the tokenizer, ``deploy.json`` (``extra`` added) and the traced graph of a text
    model into ``tmp``; return the graph's input names and the run's max_length."""
    from torch.export import Dim

    from pretune.training.run import position_limit

    if not getattr(tokenizer, "is_fast", False):
        raise PretuneError(
            f"The ONNX export runs the model's tokenizer from tokenizer.json, but "
            f"{type(tokenizer).__name__} is not a fast tokenizer and has none. Fine-tune a model "
            f"whose tokenizer has a fast version."
        )
    settings = meta.get("settings") or {}
    max_length = int((settings.get("data") or {}).get("max_length") or position_limit(model) or 512)
    names = text_input_names(model, tokenizer)
    tokenizer.save_pretrained(tmp)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    info = _deploy_info(meta, model, kind, "text", max_length=max_length, pad_id=int(pad),
                        inputs=names, **extra)
    (tmp / DEPLOY_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    example = tokenizer(["a first example text to trace", "a second one"],
                        ["and its pair", "pair"] if pairs else None,
                        padding=True, return_tensors="pt",
                        return_token_type_ids="token_type_ids" in names)
    batch, sequence = Dim("batch"), Dim("sequence", max=max(max_length, 8))
    _trace(_text_graph(model, names), tuple(example[n] for n in names), names,
           (tuple({0: batch, 1: sequence} for _ in names),), tmp / FP32_FILE)
    return names, max_length


def _export_image(model, processor, meta, kind, valid, tmp: Path):
    """Trace an image model into ``tmp`` (uint8 pixels in); return the torch logits of
    ``valid``'s images and their paths."""
    import dataclasses

    import torch
    from torch.export import Dim

    from pretune.data.images import PixelSpec, decode, normalize

    spec = PixelSpec.of(processor)
    processor.save_pretrained(tmp)
    info = _deploy_info(meta, model, kind, "image", pixels=dataclasses.asdict(spec),
                        inputs=["pixels"])
    (tmp / DEPLOY_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    paths = list(valid.texts)
    example = torch.zeros((2, 3, spec.height, spec.width), dtype=torch.uint8)
    _trace(_image_graph(model, spec), (example,), ["pixels"], ({0: Dim("batch")},),
           tmp / FP32_FILE)
    out = []
    for s in range(0, len(paths), CHECK_BATCH):
        x = torch.from_numpy(np.stack([decode(p, spec) for p in paths[s:s + CHECK_BATCH]]))
        with torch.no_grad():
            out.append(model(pixel_values=normalize(x.float() / 255.0, spec)).logits.float().numpy())
    return np.concatenate(out), {"paths": paths}


def _quantize(tmp: Path, expected: np.ndarray, check: dict, kind: str) -> dict[str, float]:
    """Write the int8 copy beside the fp32 graph; measure it against the torch logits."""
    _need("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to run shape pre-processing first, on every call
    try:
        quantize_dynamic(str(tmp / FP32_FILE), str(tmp / INT8_FILE), weight_type=QuantType.QInt8,
                         per_channel=True)
    finally:
        root.setLevel(level)
    got = _onnx_logits(OnnxModel(tmp, int8=True), **check)
    if kind in ("classification", "token"):  # token: (tokens, tags), so per token
        agree = float(np.mean(got.argmax(axis=1) == expected.argmax(axis=1)))
    elif kind == "multilabel":
        agree = float(np.mean((got > 0) == (expected > 0)))
    else:
        agree = float("nan")
    return {"max_diff": float(np.abs(got - expected).max()), "agreement": agree}
