"""Predicting with an exported ONNX model through ONNX Runtime, without torch.

An export directory (written by ``pretune.deploy.export``) holds ``model.onnx`` (and
``model.int8.onnx`` when quantized), ``deploy.json`` (what the model needs and means: its inputs,
labels, task, max_length, image size), the tokenizer's ``tokenizer.json`` or the image
processor's config, and the model's ``pretune.yaml``. ``OnnxModel`` reads it; ``predict`` writes
the same table as ``pretune predict`` on the torch model.

Text is tokenized with the ``tokenizers`` library from ``tokenizer.json`` (truncated longest-first
to the run's max_length, as training did), after the text preprocessing the model was trained
with. Images are decoded with Pillow to uint8; the graph itself scales and normalizes them.
A token classification model (a tag per word) reads sentences as words, splits long ones into
overlapping windows and finds each word's first sub-token from the ``tokenizers`` library's
word ids, through the same windowing as training (``pretune.data.tokens.windows_of``).
Nothing here imports torch or transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from pretune.errors import MissingExtraError, ModelError

DEPLOY_FILE = "deploy.json"
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
FORMAT = "pretune-onnx/1"


def is_export_dir(path: str | Path) -> bool:
    """True for a directory written by ``pretune export --format onnx``."""
    return (Path(path) / DEPLOY_FILE).is_file() and (Path(path) / FP32_FILE).is_file()


def _runtime():
    try:
        import onnxruntime
    except ImportError:
        raise MissingExtraError("onnxruntime", "onnx", "Running an ONNX model") from None
    return onnxruntime


class OnnxModel:
    """An exported model: ``logits`` of texts (and pairs) or images, ``outputs`` as predictions."""

    def __init__(self, directory: str | Path, *, int8: bool = False, threads: int | None = None):
        self.directory = Path(directory)
        if not is_export_dir(self.directory):
            raise ModelError(
                f"An ONNX model directory must hold {DEPLOY_FILE} and {FP32_FILE}, but "
                f"{directory} does not. Write one with: pretune export RUN --format onnx --output DIR"
            )
        self.info: dict[str, Any] = json.loads((self.directory / DEPLOY_FILE).read_text("utf-8"))
        file = self.directory / (INT8_FILE if int8 else FP32_FILE)
        if not file.is_file():
            raise ModelError(
                f"--int8 needs the quantized copy {file.name}, but {self.directory} has none. "
                f"Export again with --quantize int8."
            )
        ort = _runtime()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.labels: list[str] = [str(x) for x in self.info["labels"]]
        self.kind: str = self.info["kind"]
        self._tokenizer = None

    @property
    def modality(self) -> str:
        return self.info["modality"]

    # --- text --------------------------------------------------------------------------------

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(self.directory / "tokenizer.json"))
            tok.no_padding()
            tok.enable_truncation(int(self.info["max_length"]), strategy="longest_first")
            self._tokenizer = tok
        return self._tokenizer

    def prepare(self, texts: Sequence[str], pairs: Sequence[str] | None = None
                ) -> tuple[list[str], list[str] | None]:
        return prepare_texts(self.info, texts, pairs)

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """One padded batch of the graph's inputs for raw (already preprocessed) texts."""
        items = list(texts) if pairs is None else list(zip(texts, pairs))
        encodings = self.tokenizer.encode_batch(items)
        return self.feed([e.ids for e in encodings], [e.type_ids for e in encodings])

    def feed(self, ids: Sequence[Sequence[int]],
             type_ids: Sequence[Sequence[int]] | None = None) -> dict[str, np.ndarray]:
        """The graph's inputs for token ids (and token type ids, else zeros), padded on the
        right to the longest."""
        feed = padded(ids, int(self.info["pad_id"]), type_ids)
        return {name: feed[name] for name in self.input_names}

    # --- words (token classification) --------------------------------------------------------

    def windows(self, words: Sequence[Sequence[str]]):
        """Sentences given as words as token windows (``word_windows``), at the run's
        max_length and stride."""
        return word_windows(self.tokenizer, words, int(self.info["max_length"]),
                            int(self.info.get("stride", 32)))

    def window_probs(self, windows, batch_size: int = 64,
                     on_batch: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
        """Tag probabilities (tokens, tags) of each window's tokens, windows batched by length."""
        ids = windows.encoded.input_ids
        order = np.argsort([len(x) for x in ids], kind="stable")
        total = -(-len(order) // batch_size)
        out: list[np.ndarray] = [np.zeros((0, len(self.labels)), np.float32)] * len(ids)
        for done, start in enumerate(range(0, len(order), batch_size), 1):
            idx = order[start:start + batch_size]
            logits = self.logits(self.feed([ids[i] for i in idx]))
            shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
            probs = shifted / shifted.sum(axis=-1, keepdims=True)
            for k, i in enumerate(idx):
                out[i] = probs[k, :len(ids[i])]
            if on_batch is not None:
                on_batch(done, total)
        return out

    # --- images ------------------------------------------------------------------------------

    def pixels(self, paths: Sequence[str]) -> np.ndarray:
        """uint8 (n, 3, height, width): the images resized as the model's processor says."""
        from pretune.data.images import PixelSpec, decode

        spec = PixelSpec(**{k: tuple(v) if isinstance(v, list) else v
                            for k, v in self.info["pixels"].items()})
        return np.stack([decode(p, spec) for p in paths])

    # --- outputs -----------------------------------------------------------------------------

    def logits(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.session.run(["logits"], feed)[0], dtype=np.float32)

    def outputs(self, logits: np.ndarray) -> np.ndarray:
        """Probabilities (classification, multi-label) or values in the data's units."""
        if self.kind == "regression":
            return logits.reshape(-1) * float(self.info.get("target_std", 1.0)) + float(
                self.info.get("target_mean", 0.0))
        if self.kind == "multilabel":
            return 1.0 / (1.0 + np.exp(-logits))
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    def batch_feeds(self, texts=None, pairs=None, paths=None, batch_size: int = 64):
        """(row indices, feed) per batch; texts are sorted by length so batches pad little."""
        if self.modality == "image":
            for start in range(0, len(paths), batch_size):
                idx = np.arange(start, min(start + batch_size, len(paths)))
                yield idx, {self.input_names[0]: self.pixels([paths[i] for i in idx])}
            return
        order = np.argsort([len(t) + (len(pairs[i]) if pairs is not None else 0)
                            for i, t in enumerate(texts)], kind="stable")
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            yield idx, self.encode([texts[i] for i in idx],
                                   None if pairs is None else [pairs[i] for i in idx])

    def predict_outputs(self, texts=None, pairs=None, paths=None, batch_size: int = 64,
                        on_batch: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Outputs of every row, in input order (texts already preprocessed)."""
        n = len(paths) if self.modality == "image" else len(texts)
        total = -(-n // batch_size)
        chunks: list[tuple[np.ndarray, np.ndarray]] = []
        for done, (idx, feed) in enumerate(self.batch_feeds(texts, pairs, paths, batch_size), 1):
            chunks.append((idx, self.outputs(self.logits(feed))))
            if on_batch is not None:
                on_batch(done, total)
        if not chunks:
            shape = (0,) if self.kind == "regression" else (0, len(self.labels))
            return np.zeros(shape, dtype=np.float32)
        order = np.concatenate([i for i, _ in chunks])
        out = np.concatenate([o for _, o in chunks])
        result = np.empty_like(out)
        result[order] = out
        return result


def word_windows(tokenizer, words: Sequence[Sequence[str]], max_length: int, stride: int):
    """Sentences given as words as token windows (``pretune.data.tokens.Windows``), split and
    overlapped as training and ``pretune predict`` split them, with a ``tokenizers.Tokenizer``:
    its pre-tokenized encoding truncated to ``max_length``, its overflowing windows and their
    word ids (what transformers' fast tokenizers return, read without transformers)."""
    from pretune.data import tokens

    stride = tokens.window_stride(stride, max_length, tokenizer.num_special_tokens_to_add(False))
    tokenizer.no_padding()  # a saved tokenizer.json may pad to a fixed length
    tokenizer.enable_truncation(max_length, stride=stride, strategy="longest_first",
                                direction="right")
    ids, rows, word_ids = [], [], []
    for row, encoding in enumerate(tokenizer.encode_batch([list(w) for w in words],
                                                          is_pretokenized=True)):
        for part in [encoding, *encoding.overflowing]:
            ids.append(part.ids)
            rows.append(row)
            word_ids.append(part.word_ids)
    return tokens.windows_of(ids, rows, word_ids)


def padded(ids: Sequence[Sequence[int]], pad_id: int,
           type_ids: Sequence[Sequence[int]] | None = None) -> dict[str, np.ndarray]:
    """``input_ids``, ``attention_mask`` and ``token_type_ids`` (zeros unless given) of rows of
    token ids, padded on the right to the longest row (and to at least 2 positions)."""
    width = max(2, max((len(x) for x in ids), default=0))
    out = {"input_ids": np.full((len(ids), width), pad_id, dtype=np.int64)}
    out["attention_mask"] = np.zeros_like(out["input_ids"])
    out["token_type_ids"] = np.zeros_like(out["input_ids"])
    for i, row in enumerate(ids):
        out["input_ids"][i, :len(row)] = row
        out["attention_mask"][i, :len(row)] = 1
        if type_ids is not None:
            out["token_type_ids"][i, :len(row)] = type_ids[i]
    return out


def prepare_texts(info: dict[str, Any], texts: Sequence[str], pairs: Sequence[str] | None
                  ) -> tuple[list[str], list[str] | None]:
    """``texts`` and ``pairs`` preprocessed as the model's training run read them (the settings
    in ``info``, a deploy.json)."""
    from pretune.data import text_prep

    options = text_prep.TextOptions.from_settings(info.get("settings") or {})
    texts = text_prep.preprocess(list(texts), options)
    return texts, None if pairs is None else text_prep.preprocess(list(pairs), options)


def predict(directory: str | Path, source: str | Path, *, output: str | Path | None = None,
            batch_size: int = 64, text_column: str | None = None,
            text_pair_column: str | None = None, image_column: str | None = None,
            int8: bool = False, threads: int | None = None, entities: bool = False,
            on_batch: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """``pretune predict``'s table (input columns, ``prediction``, ``prob_<label>``) from the
    ONNX model in ``directory``; with ``output`` also written there. ``threads``: ONNX
    Runtime's intra-op threads (default: its own, one per core). A token classification
    model gives one row per sentence with a tag per word, and with ``entities`` its entity
    spans, as ``pretune predict`` on the torch model does."""
    from pretune.data.outputs import table_format, write_table

    if output is not None:
        table_format(Path(output))
    model = OnnxModel(directory, int8=int8, threads=threads)
    if model.kind == "token":
        result = _predict_tags(model, str(source), text_column, batch_size, entities, on_batch)
    else:
        result = _predict_rows(model, str(source), batch_size, text_column, text_pair_column,
                               image_column, on_batch)
    if output is not None:
        write_table(result, Path(output))
    return result


def _predict_rows(model: OnnxModel, source: str, batch_size: int, text_column: str | None,
                  text_pair_column: str | None, image_column: str | None,
                  on_batch: Callable[[int, int], None] | None) -> pd.DataFrame:
    """``predict`` for a model with one output per row (text, pair or image)."""
    from pretune.data.outputs import label_sets

    columns = model.info.get("columns") or {}
    if model.modality == "image":
        from pretune.data.images import read_image_inputs

        paths, frame = read_image_inputs(source, image_column=image_column,
                                         prefer=columns.get("text"))
        outputs = model.predict_outputs(paths=paths, batch_size=batch_size, on_batch=on_batch)
    else:
        from pretune.data.task import read_inputs

        pair_column = text_pair_column or columns.get("text_pair")
        texts, pairs, frame = read_inputs(source, text_column=text_column or columns.get("text"),
                                          text_pair_column=pair_column,
                                          detect_pair=bool(pair_column) or not columns)
        texts, pairs = model.prepare(texts, pairs)
        outputs = model.predict_outputs(texts, pairs, batch_size=batch_size, on_batch=on_batch)
    result = frame.reset_index(drop=True).copy()
    if model.kind == "regression":
        result["prediction"] = outputs
    else:
        if model.kind == "multilabel":
            result["prediction"] = label_sets(outputs, model.labels, float(model.info.get("threshold", 0.5)))
        else:
            result["prediction"] = [model.labels[i] for i in outputs.argmax(axis=1)]
        for i, name in enumerate(model.labels):
            result[f"prob_{name}"] = outputs[:, i]
    return result


def _predict_tags(model: OnnxModel, source: str, text_column: str | None, batch_size: int,
                  entities: bool, on_batch: Callable[[int, int], None] | None) -> pd.DataFrame:
    """``predict`` for a token classification model: the sentences of ``source`` (word lists,
    or texts split into words) read, windowed and tagged as the torch model's predict does
    (``pretune.data.tokens``), each word's tag read at its first sub-token."""
    from pretune.data import tokens
    from pretune.data.task import read_sentences

    words, texts, result = read_sentences(source, text_column)
    windows = model.windows(words)
    probs = model.window_probs(windows, batch_size, on_batch)
    per_word = tokens.word_predictions(windows, probs, [len(w) for w in words])
    return tokens.add_tags(result, per_word, model.labels, texts, words, entities=entities)
