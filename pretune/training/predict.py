"""Predictions of a trained model: on new inputs (``pretune predict``) and on a run's own splits.

``predict`` reads a saved model directory and a table (or a folder of images) and returns the
input's rows with their predictions, reading the inputs as the model's training run did (its
text preprocessing and ``max_length``). ``model_outputs`` and ``valid_predictions`` give a kept
model's outputs on the task's validation (or training) split, which the search's final
assembly and confusion matrices read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from pretune.config import RunConfig
from pretune.data import text_prep, tokens
from pretune.data.collate import Batches
from pretune.data.images import ImageBatches, PixelSpec, image_cache, is_image_task, read_image_inputs
from pretune.data.outputs import label_sets, table_format, write_table
from pretune.data.task import TaskData, read_inputs, read_sentences
from pretune.data.tokenize import encode
from pretune.models.io import load_model_dir, resolve_model_dir
from pretune.training import objectives
from pretune.training.caches import RunCaches
from pretune.training.device import pick_device, resolve_precision
from pretune.training.inputs import position_limit, prepare_image_data, token_windows
from pretune.training.loop import predict_proba
from pretune.training.metadata import decision_threshold
from pretune.training.metrics import tag_sequences


def predict(
    model_dir: str | Path,
    source: str | Path,
    *,
    output: str | Path | None = None,
    batch_size: int = 64,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    image_column: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    precision: str = "fp32",
    on_batch: Callable[[int, int], None] | None = None,
    entities: bool = False,
) -> pd.DataFrame:
    """Predict labels and per-class probabilities for every row of ``source``.

    ``model_dir`` is a model directory or a run directory holding ``best/``. The result has
    the input's columns plus ``prediction`` and ``prob_<label>`` for each label, in input order;
    with ``output`` it is also written there (CSV, TSV, JSONL or Parquet by extension).
    Regression: ``prediction`` is the value in the training data's units (no ``prob_``
    columns). Multi-label: ``prediction`` is the list of labels whose probability reaches the
    saved threshold (a JSON list in CSV and TSV files). For an
    image model, ``source`` is a folder of images or a table with a column of image paths
    (``image_column``, else the training run's, else detected). Text models apply the text
    preprocessing they were trained with (``pretune.data.text_prep``). Token classification:
    one row per sentence with its tags in ``prediction`` (see ``_predict_tokens``), and with
    ``entities`` its entity spans in ``entities``.
    """
    if output is not None:
        table_format(Path(output))  # a wrong extension fails before the work, not after
    model, tokenizer, meta = load_model_dir(resolve_model_dir(model_dir), allow_pickle=allow_pickle,
                                            trust_remote_code=trust_remote_code)
    settings = meta.get("settings", {})
    task = meta.get("task") or {}
    kind = task.get("kind") or _kind_of(model.config)
    if kind == "token":
        result = _predict_tokens(model, tokenizer, settings, str(source), batch_size,
                                 text_column, precision, on_batch, entities=entities)
    else:
        columns = meta.get("columns") or {}
        if not hasattr(tokenizer, "pad_token_id"):  # an image processor: an image model
            paths, frame = read_image_inputs(str(source), image_column=image_column,
                                             prefer=columns.get("text"))
            pixels = image_cache(None).pixels(paths, PixelSpec.of(tokenizer))
            batches = ImageBatches(pixels, None, PixelSpec.of(tokenizer), batch_size, shuffle=False)
        else:
            batches, frame = _text_batches(model, tokenizer, settings, str(source), batch_size,
                                           text_column or columns.get("text"),
                                           text_pair_column or columns.get("text_pair"),
                                           detect_pair=bool(text_pair_column or columns.get("text_pair"))
                                           or not columns)
        device = pick_device()
        model.to(device)
        probs, _, _ = predict_proba(model, _Counting(batches, on_batch), device=device,
                                    precision=resolve_precision(precision, device),
                                    objective=_objective_of(kind, task))
        result = _with_predictions(frame.reset_index(drop=True).copy(), probs, kind, task,
                                   model.config.id2label)
    if output is not None:
        write_table(result, Path(output))
    return result


def _text_batches(model, tokenizer, settings: dict, source: str, batch_size: int,
                  text_column: str | None, text_pair_column: str | None, *,
                  detect_pair: bool) -> tuple[Batches, pd.DataFrame]:
    """The texts of ``source`` as the model's run read them (its text preprocessing and
    ``max_length``), in batches, and the table they came from."""
    texts, pairs, frame = read_inputs(source, text_column=text_column,
                                      text_pair_column=text_pair_column, detect_pair=detect_pair)
    options = text_prep.TextOptions.from_settings(settings)  # as the model was trained
    texts = text_prep.preprocess(texts, options)
    pairs = None if pairs is None else text_prep.preprocess(pairs, options)
    max_length = (settings.get("data") or {}).get("max_length") or position_limit(model) or 512
    enc = encode(texts, pairs, None, tokenizer, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return Batches(enc, batch_size, pad_id=pad_id, shuffle=False), frame


def _with_predictions(result: pd.DataFrame, outputs: np.ndarray, kind: str, task: dict,
                      id2label: dict) -> pd.DataFrame:
    """``result`` with ``prediction`` (and ``prob_<label>`` columns unless regression) added
    from the model's ``outputs``."""
    if kind == "regression":
        result["prediction"] = outputs
        return result
    names = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(outputs.shape[1])]
    if kind == "multilabel":
        result["prediction"] = label_sets(outputs, names, float(task.get("threshold", 0.5)))
    else:
        result["prediction"] = [names[i] for i in outputs.argmax(axis=1)]
    for i, name in enumerate(names):
        result[f"prob_{name}"] = outputs[:, i]
    return result


def _kind_of(model_config) -> str:
    """The task of a model directory without pretune.yaml, from its config's architectures
    (token classification) and problem_type."""
    if any(str(a).endswith("ForTokenClassification")
           for a in getattr(model_config, "architectures", None) or ()):
        return "token"
    return {"regression": "regression", "multi_label_classification": "multilabel"}.get(
        getattr(model_config, "problem_type", None) or "", "classification")


def _predict_tokens(model, tokenizer, settings: dict, source: str, batch_size: int,
                    text_column: str | None, precision: str, on_batch, *,
                    entities: bool = False) -> pd.DataFrame:
    """``predict`` for a token classification model: one row per sentence of ``source`` (a
    table with a column of word lists, or texts, which are split into words), with its tags
    in ``prediction``, one per word (texts also get their words in ``tokens``). ``entities``:
    also each sentence's entities (type, character offsets and text, score) in ``entities``;
    offsets count in the input text, or in the words joined by spaces for word lists."""
    per_word, names, words, texts, result = word_probabilities(
        model, tokenizer, settings, source, batch_size, text_column, precision, on_batch)
    return tokens.add_tags(result, per_word, names, texts, words, entities=entities)


def word_probabilities(model, tokenizer, settings: dict, source: str, batch_size: int = 64,
                       text_column: str | None = None, precision: str = "fp32",
                       on_batch=None) -> tuple[list[np.ndarray], list[str], list[list[str]],
                                               list[str], pd.DataFrame]:
    """A token model's tag probabilities for each word of ``source``'s sentences, read at the
    word's first sub-token as ``pretune predict`` reads them: ``(per_word, tag names, words,
    texts, rows)``, one (words, tags) array per sentence (``pretune predict --ensemble``
    averages them across models)."""
    words, texts, result = read_sentences(source, text_column)
    data = settings.get("data") or {}
    max_length = data.get("max_length") or position_limit(model) or 512
    windows = tokens.encode_words(words, None, tokenizer, max_length, stride=data.get("stride", 32))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = _Counting(Batches(windows.encoded, batch_size, pad_id=pad_id, shuffle=False), on_batch)
    device = pick_device()
    model.to(device)
    probs, _, _ = predict_proba(model, batches, precision=resolve_precision(precision, device),
                                device=device, objective=objectives.TokenClassification([]))
    id2label = model.config.id2label
    names = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(probs.shape[-1])]
    per_word = tokens.word_predictions(windows, probs, [len(w) for w in words])
    return per_word, names, words, texts, result


def _objective_of(kind: str, task: dict) -> objectives.Objective:
    """The objective that turns a saved model's logits into predictions: a regression model's
    standardization (from pretune.yaml) is undone here."""
    if kind == "regression":
        return objectives.Regression(float(task.get("target_mean", 0.0)),
                                     float(task.get("target_std", 1.0)))
    if kind == "multilabel":
        return objectives.MultiLabel()
    if kind == "token":
        return objectives.TokenClassification(list(task.get("label_names") or []),
                                              str(task.get("scheme") or "IOB2"))
    return objectives.Classification()


class _Counting:
    """Wraps batches to report progress (done, total) after each one."""

    def __init__(self, batches, on_batch):
        self.batches, self.on_batch = batches, on_batch

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for i, batch in enumerate(self.batches, 1):
            yield batch
            if self.on_batch is not None:
                self.on_batch(i, len(self.batches))


def valid_predictions(result: Any, task: TaskData,
                      caches: RunCaches | None = None) -> pd.DataFrame:
    """The predictions of ``result``'s kept model (a ``training.run.FitResult`` that kept it)
    on the validation split, in the split's order: ``label``,
    ``prediction`` and ``prob_<label>`` per row (what a confusion matrix is drawn from);
    regression: ``label`` and ``prediction`` values; multi-label: label sets as JSON lists."""
    outputs, labels = valid_outputs(result, task, caches)
    return predictions_frame(outputs, labels, result.label_names, task.kind,
                             decision_threshold(result.config, result.metrics))


def valid_outputs(result: Any, task: TaskData,
                  caches: RunCaches | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The kept model's outputs on the validation split (``Objective.outputs``: probabilities,
    or values in the data's units) and the split's labels, in the split's order."""
    if result.model is None or result.tokenizer is None:
        raise ValueError("valid_predictions needs a FitResult that kept its model")
    return model_outputs(result.model, result.tokenizer, result.config, task, caches)


def model_outputs(model, tokenizer, config: RunConfig, task: TaskData,
                  caches: RunCaches | None = None, *, split: str = "valid",
                  objective: objectives.Objective | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Outputs of ``model`` (trained with ``config``) on ``task``'s ``split`` (valid or train),
    read as the run read them (its preprocessing and max_length), and the split's labels.
    ``objective`` turns logits into outputs (default: ``task``'s, as the run trained). Token
    classification: per word, read at its first sub-token (``tokens.sentence_outputs``):
    (sentences, words, tags) probabilities and (sentences, words) tags, -100 past the end."""
    caches = caches or RunCaches.for_one_run()
    windows = None  # token classification's
    if is_image_task(task):
        if split != "valid":
            raise ValueError("model_outputs reads the validation split of image data only")
        batches = prepare_image_data(config, task, tokenizer, caches).batches(
            1, config.train.eval_batch_size, 0, augment=False)[1]
    else:
        task = text_prep.apply_to_task(task, config.data)  # as the run saw it
        rows = task.valid if split == "valid" else task.train
        if task.kind == "token":
            windows = token_windows(config, task, tokenizer, split)
        enc = (windows.encoded if windows is not None
               else caches.tokens.encode(rows, tokenizer, config.data.max_length))  # the run's own
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        batches = Batches(enc, config.train.eval_batch_size, pad_id=pad_id, shuffle=False)
    device = next(model.parameters()).device
    objective = objective or objectives.for_task(task, config.train,
                                                 standardize=config.data.standardize_target)
    outputs, labels, _ = predict_proba(model, batches, device=device,
                                       precision=resolve_precision(config.train.precision, device),
                                       objective=objective)
    if windows is not None:  # per word of each sentence, whatever the windows
        return tokens.sentence_outputs(windows, outputs, rows.labels,
                                       outside_tag(task.label_names))
    return outputs, labels


def outside_tag(names) -> int:
    """The id of the O tag (what a word no token stands for is tagged), else 0."""
    names = [str(n) for n in names]
    return names.index("O") if "O" in names else 0


def predictions_frame(outputs: np.ndarray, labels: np.ndarray, label_names, kind: str,
                      threshold: float = 0.5) -> pd.DataFrame:
    """``label``, ``prediction`` and ``prob_<label>`` per row of ``outputs``; token
    classification: the true and predicted tags of each sentence, as JSON lists."""
    names = [str(n) for n in label_names]
    if kind == "regression":
        return pd.DataFrame({"label": labels, "prediction": outputs})
    if kind == "token":  # per window of tokens: the tags of the words it is read for
        true, pred = tag_sequences(outputs, labels, names)
        return pd.DataFrame({"label": [json.dumps(t) for t in true],
                             "prediction": [json.dumps(p) for p in pred]})
    if kind == "multilabel":
        frame = pd.DataFrame({"label": label_sets(labels, names, 0.5),
                              "prediction": label_sets(outputs, names, threshold)})
        for column in ("label", "prediction"):
            frame[column] = frame[column].map(json.dumps)
    else:
        frame = pd.DataFrame({"label": [names[i] for i in labels],
                              "prediction": [names[i] for i in outputs.argmax(axis=1)]})
    for i, name in enumerate(names):
        frame[f"prob_{name}"] = outputs[:, i]
    return frame
