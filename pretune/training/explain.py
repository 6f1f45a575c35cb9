"""Explanations of a model's predictions: integrated gradients (Captum) toward the predicted
label, on the input embeddings of a text model (a weight per token) or on the pixels of an
image model (a weight per pixel, from a black baseline image).

For each row, the attribution of a token is the integral of the gradient of the predicted
label's logit along the straight path from a baseline (every token but the special ones
replaced by the padding token) to the row's embeddings, summed over the embedding dimensions:
positive weights push toward the prediction, negative ones away from it. Weights are scaled by
the row's largest absolute weight, so a page can shade them on one scale. Captum also reports
the integral's error (its completeness gap), kept as ``delta``.

Classification explains the predicted class (and, when the file has labels, marks the
misclassified rows); multi-label the most probable label; regression the predicted value. ``explain`` reads rows as ``pretune predict`` does (the model's text
preprocessing and max_length) and returns plain records for ``pretune.report.explain``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pretune.errors import MissingExtraError


@dataclass
class Explained:
    """One row: its tokens and their weights toward ``prediction``."""

    row: int  # position in the input file, from 0
    text: str
    pair: str | None
    tokens: list[str]
    weights: list[float]  # in [-1, 1], one per token
    prediction: str
    confidence: float | None  # probability of the explained label; None for regression
    label: str | None = None  # the file's label, when it has one
    delta: float = 0.0  # Captum's convergence delta for this row
    first_tokens: int | None = None  # a pair's row: how many of ``tokens`` are the first text's
    pixels: Any = None  # an image's row: the uint8 (3, height, width) image the model saw
    heatmap: Any = None  # and a weight in [-1, 1] per pixel, (height, width)

    @property
    def misclassified(self) -> bool | None:
        if self.label is None or self.confidence is None:
            return None
        return self.label != self.prediction


def _captum() -> None:
    try:
        import captum.attr  # noqa: F401
    except ImportError:
        raise MissingExtraError("captum", "explain", "pretune explain") from None


def explain(model_path: str | Path, source: str | Path, *, limit: int | None = 200,
            steps: int = 32, text_column: str | None = None, text_pair_column: str | None = None,
            image_column: str | None = None, label_column: str | None = None,
            allow_pickle: bool = False, on_row: Callable[[int, int], None] | None = None
            ) -> list[Explained]:
    """Explain the first ``limit`` rows of ``source`` with the model at ``model_path`` (a
    model or run directory); ``steps`` points on the integration path. A text model's rows get
    token weights; an image model's get a weight per pixel (``heatmap``)."""
    from pretune.models.io import load_model_dir, resolve_model_dir

    _captum()
    model, tokenizer, meta = load_model_dir(resolve_model_dir(model_path), allow_pickle=allow_pickle)
    if _kind(meta) == "token":
        from pretune.errors import ConfigError

        raise ConfigError("pretune explain weighs each token toward one label per row, but this "
                          "is a token classification model (a tag per word). Use pretune predict "
                          "--entities to see its tags and their scores.")
    model.to("cpu").float().eval()
    if not hasattr(tokenizer, "pad_token_id"):  # an image processor
        return _explain_images(model, tokenizer, meta, source, limit, steps, image_column, on_row)
    return _explain_texts(model, tokenizer, meta, source, limit, steps, text_column,
                          text_pair_column, label_column, on_row)


def _explain_texts(model, tokenizer, meta, source, limit, steps, text_column, text_pair_column,
                   label_column, on_row) -> list[Explained]:
    import torch
    from captum.attr import LayerIntegratedGradients

    from pretune.data import text_prep
    from pretune.data.task import read_inputs
    from pretune.training.run import position_limit

    columns, settings = meta.get("columns") or {}, meta.get("settings") or {}
    pair_column = text_pair_column or columns.get("text_pair")
    texts, pairs, frame = read_inputs(str(source), text_column=text_column or columns.get("text"),
                                      text_pair_column=pair_column,
                                      detect_pair=bool(pair_column) or not columns)
    kind, task = _kind(meta), meta.get("task") or {}
    labels = _labels(frame, label_column or columns.get("label")) if kind == "classification" else None
    n = len(texts) if limit is None else min(limit, len(texts))
    options = text_prep.TextOptions.from_settings(settings)
    seen = text_prep.preprocess(texts[:n], options)
    seen_pairs = None if pairs is None else text_prep.preprocess(pairs[:n], options)
    max_length = (settings.get("data") or {}).get("max_length") or position_limit(model) or 512

    def logits_of(input_ids, attention_mask, token_type_ids=None):
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits

    lig = LayerIntegratedGradients(logits_of, model.get_input_embeddings())
    special = set(tokenizer.all_special_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[Explained] = []
    for i in range(n):
        enc = tokenizer(seen[i], None if seen_pairs is None else seen_pairs[i], truncation="longest_first",
                        max_length=max_length, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        types = enc.get("token_type_ids") if seen_pairs is not None else None
        with torch.no_grad():
            logits = logits_of(ids, mask, types)[0].float()
        target, prediction, confidence = _target(kind, logits, _names(model), task)
        base = torch.tensor([[t if t in special else pad for t in ids[0].tolist()]])
        attr, delta = lig.attribute(ids, baselines=base, additional_forward_args=(mask, types),
                                    target=target, n_steps=steps, return_convergence_delta=True)
        weights = _scaled(attr.sum(dim=-1)[0])
        keep = [j for j, t in enumerate(ids[0].tolist()) if t not in special]
        tokens = tokenizer.convert_ids_to_tokens([ids[0, j].item() for j in keep])
        first = None if seen_pairs is None else sum(enc.sequence_ids(0)[j] == 0 for j in keep)
        out.append(Explained(i, texts[i], None if pairs is None else pairs[i], tokens,
                             [round(float(weights[j]), 4) for j in keep], prediction, confidence,
                             None if labels is None else labels[i], float(delta.abs().max()),
                             first))
        if on_row is not None:
            on_row(i + 1, n)
    return out


def _explain_images(model, processor, meta, source, limit, steps, image_column, on_row
                    ) -> list[Explained]:
    """Integrated gradients on the pixels, from a black image; one weight per pixel (summed
    over the colour channels). Class folders named after the model's labels give the labels."""
    import torch
    from captum.attr import IntegratedGradients

    from pretune.data.images import PixelSpec, decode, normalize, read_image_inputs

    spec = PixelSpec.of(processor)
    paths, _ = read_image_inputs(str(source), image_column=image_column,
                                 prefer=(meta.get("columns") or {}).get("text"))
    kind, task, names = _kind(meta), meta.get("task") or {}, _names(model)
    n = len(paths) if limit is None else min(limit, len(paths))
    ig = IntegratedGradients(lambda pixel_values: model(pixel_values=pixel_values).logits)
    out: list[Explained] = []
    for i in range(n):
        pixels = decode(paths[i], spec)
        x = normalize(torch.from_numpy(pixels).float().unsqueeze(0) / 255.0, spec)
        with torch.no_grad():
            logits = model(pixel_values=x).logits[0].float()
        target, prediction, confidence = _target(kind, logits, names, task)
        attr, delta = ig.attribute(x, baselines=normalize(torch.zeros_like(x), spec), target=target,
                                   n_steps=steps, return_convergence_delta=True)
        parent = Path(paths[i]).parent.name
        label = parent if kind == "classification" and parent in names else None
        out.append(Explained(i, paths[i], None, [], [], prediction, confidence, label,
                             float(delta.abs().max()), pixels=pixels,
                             heatmap=_scaled(attr[0].sum(dim=0)).numpy().round(4)))
        if on_row is not None:
            on_row(i + 1, n)
    return out


def _kind(meta: dict) -> str:
    return (meta.get("task") or {}).get("kind") or "classification"


def _names(model) -> list[str]:
    id2label = model.config.id2label
    return [str(id2label.get(i, id2label.get(str(i), i))) for i in range(model.config.num_labels)]


def _scaled(weights):
    """``weights`` (a tensor) divided by their largest absolute value, so they lie in [-1, 1]."""
    weights = weights.detach().float()
    return weights / weights.abs().max().clamp(min=1e-12)


def _target(kind: str, logits, names: list[str], task: dict[str, Any]):
    """(Captum target, prediction as text, its probability) for one row's logits."""
    if kind == "regression":
        value = float(logits[0]) * float(task.get("target_std", 1.0)) + float(task.get("target_mean", 0.0))
        return 0, f"{value:.4g}", None
    probs = logits.sigmoid() if kind == "multilabel" else logits.softmax(-1)
    top = int(probs.argmax())
    return top, names[top], float(probs[top])


def _labels(frame, column: str | None) -> list[str] | None:
    """A classification file's labels as text, when it has them."""
    if not column or column not in frame.columns:
        return None
    return [str(value) for value in frame[column].tolist()]


def order(rows: list[Explained]) -> list[Explained]:
    """Misclassified rows first (when the file has labels), then by confidence, highest first."""
    return sorted(rows, key=lambda r: (not bool(r.misclassified),
                                       -(r.confidence if r.confidence is not None else 0.0), r.row))


def words(row: Explained) -> list[tuple[str, float]]:
    """The row's tokens joined into words with their summed weights: a WordPiece continuation
    (``##ing``) joins the token before it."""
    out: list[tuple[str, float]] = []
    for token, weight in zip(row.tokens, row.weights):
        if token.startswith("##") and out:
            word, total = out[-1]
            out[-1] = (word + token[2:], total + weight)
        else:
            out.append((token, weight))
    return out


def top_tokens(row: Explained, k: int = 5, sign: int = 1) -> list[tuple[str, float]]:
    """The ``k`` words weighing most toward (sign 1) or against (sign -1) the prediction."""
    pairs = [(t, w) for t, w in words(row) if sign * w > 0]
    return sorted(pairs, key=lambda p: -sign * p[1])[:k]
