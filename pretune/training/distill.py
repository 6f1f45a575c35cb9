"""Distillation: a student trained on a teacher's soft labels as well as on the true labels.

Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network": the student matches
the teacher's output distribution softened by a temperature ``T``; the soft term's gradient
scales as 1/T^2, so it is multiplied by T^2 to keep its weight as T changes. The loss is

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * task loss

for single-label classification. Token classification: the same for each word's tags, at the
word's first sub-token (the teacher's logits file holds one row per training window and NaN
where it teaches nothing; ``tokens.on_windows``), averaged over those tokens. Multi-label: the
same with each label's Bernoulli distribution (sigmoid) in place of the softmax. Regression:
the mean squared difference to the teacher's output (in the standardized units both train
in); there is nothing to soften, so ``T`` does not enter.

The teacher's logits on the training split are computed once (``teacher_logits``) and kept in
a safetensors file keyed by the teacher's weights, the training texts and ``max_length``; the
loss looks them up by each example's row in the split (the batch's ``index``). The teacher may
read the rows preprocessed otherwise than the student (``inputs``: its own text preprocessing);
the file is labelled with the student's training texts, which its training checks.

``layer_student`` builds a smaller student from the teacher itself, keeping every other
encoder layer as DistilBERT (Sanh et al., 2019) initialized its student.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pretune.config import TrainConfig
from pretune.errors import ConfigError, DataError
from pretune.training.objectives import Objective

log = logging.getLogger(__name__)

LOGITS_PREFIX = "teacher-logits-"
FORMAT = 2  # bump when the file's content changes meaning (2: the teacher's own texts)


# --- the loss ----------------------------------------------------------------------------------


def soft_loss(kind: str, student: torch.Tensor, teacher: torch.Tensor,
              temperature: float) -> torch.Tensor:
    """The distillation term of a batch (a mean over its examples), 0 when student == teacher."""
    t = float(temperature)
    if kind == "regression":
        return F.mse_loss(student.reshape(-1), teacher.reshape(-1).to(student.dtype))
    teacher = teacher.to(student.dtype)
    if kind == "token":  # (windows, tokens, tags): the tokens the teacher has a word's tags for
        teacher = teacher[:, :student.shape[1]]  # the file is as wide as the widest window
        taught = ~torch.isnan(teacher[..., 0])
        if not bool(taught.any()):
            return student.sum() * 0.0
        student, teacher = student[taught], teacher[taught]
    if kind == "multilabel":
        p = torch.sigmoid(teacher / t)
        # Bernoulli KL per label: cross-entropy minus the teacher's own entropy.
        kl = (F.binary_cross_entropy_with_logits(student / t, p, reduction="none")
              - F.binary_cross_entropy_with_logits(teacher / t, p, reduction="none"))
        return t * t * kl.mean()
    return t * t * F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                            log_target=True, reduction="batchmean")


class Distillation(Objective):
    """A task's objective with a teacher's soft labels added to its training loss; evaluation,
    outputs and metrics stay the task's."""

    uses_index = True

    def __init__(self, task: Objective, teacher: torch.Tensor):
        self.task = task
        self.kind = task.kind
        self.teacher = teacher.float()

    def loss_fn(self, settings: TrainConfig, device):
        task_loss = self.task.loss_fn(settings, device)
        teacher = self.teacher.to(device)
        alpha, temperature = float(settings.distill_alpha), float(settings.distill_temperature)

        def loss(logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            hard = task_loss(logits, labels)
            if alpha == 0.0:
                return hard
            if int(index.max()) >= teacher.shape[0]:  # token rows are windows: theirs differ
                raise DataError(
                    f"distill_logits holds the teacher's logits on {teacher.shape[0]} training "
                    f"windows, but this run makes more ({int(index.max()) + 1} at least): its "
                    f"max_length, stride or tokenizer differ from those the file was written "
                    f"for. Run pretune distill again, or keep the settings the file was made with.")
            soft = soft_loss(self.kind, logits, teacher[index.to(device)], temperature)
            return soft if alpha == 1.0 else alpha * soft + (1.0 - alpha) * hard

        return loss

    def eval_loss(self, logits, labels) -> float:
        return self.task.eval_loss(logits, labels)

    def outputs(self, logits):
        return self.task.outputs(logits)

    def metrics(self, outputs, labels, loss, settings=None):
        return self.task.metrics(outputs, labels, loss, settings)


def distillation(objective: Objective, task, settings: TrainConfig) -> Distillation:
    """``objective`` with the teacher's logits in ``settings.distill_logits``, which must be
    those of ``task``'s training split."""
    logits, meta = read_logits(settings.distill_logits)
    rows = len(task.train.labels)
    given = logits.shape[0]
    if objective.kind == "token":  # a row per window: the file says how many sentences
        given = int(meta.get("sentences", -1))
    if given != rows or meta.get("train_digest") != train_digest(task):
        raise DataError(
            f"distill_logits must hold the teacher's logits on this run's training split, but "
            f"{settings.distill_logits} was computed on other rows ({given} rows, this "
            f"split has {rows}). Run pretune distill again to compute them for this data."
        )
    width = 1 if objective.kind == "regression" else len(task.label_names)
    if logits.shape[-1] != width:
        raise DataError(
            f"The teacher must give one output per label ({width}), but "
            f"{settings.distill_logits} has {logits.shape[-1]}. Distill from a model trained on "
            f"the same labels."
        )
    return Distillation(objective, logits)


# --- the teacher's logits, computed once ---------------------------------------------------------


def train_digest(task) -> str:
    """What names a training split: its texts (and pairs) in order."""
    from pretune.data.cache import texts_digest

    return texts_digest(task.train.texts, task.train.pairs)


def logits_key(teacher_dir: str | Path, task, max_length: int, inputs=None) -> str:
    """Names a teacher's logits: its weights (files, sizes, times), the training texts (the
    student's, and the teacher's ``inputs`` when given) and the length they were cut to."""
    from pretune.models.features import model_fingerprint

    parts = [FORMAT, model_fingerprint(str(teacher_dir)), train_digest(task),
             train_digest(inputs if inputs is not None else task), int(max_length)]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def teacher_logits(teacher_dir: str | Path, task, max_length: int, cache_dir: str | Path, *,
                   batch_size: int = 128, model=None, tokenizer=None,
                   inputs=None) -> tuple[Path, bool]:
    """The file of the teacher's logits on ``task``'s training split, (path, computed now).

    The teacher reads the training texts of ``inputs`` (the same rows, preprocessed as the
    teacher was trained), else those of ``task``; the file is labelled with ``task``'s texts,
    the rows the student trains on. Found by ``logits_key`` in ``cache_dir``, else computed
    (the teacher in ``teacher_dir``, or ``model`` and ``tokenizer`` when given) and written
    there."""
    inputs = task if inputs is None else inputs
    if len(inputs.train.texts) != len(task.train.texts):
        raise ValueError(f"inputs has {len(inputs.train.texts)} training rows, the task "
                         f"{len(task.train.texts)}: they must be the same rows")
    key = logits_key(teacher_dir, task, max_length, inputs)
    path = Path(cache_dir) / f"{LOGITS_PREFIX}{key}.safetensors"
    if path.is_file():
        log.info("teacher logits found in %s", path)
        return path, False
    if model is None or tokenizer is None:
        from pretune.models.io import load_model_dir

        model, tokenizer, _ = load_model_dir(teacher_dir)
    started = time.perf_counter()
    logits = predict_logits(model, tokenizer, inputs.train.texts, inputs.train.pairs, max_length,
                            batch_size)
    write_logits(path, logits, task, inputs, teacher=str(teacher_dir), max_length=max_length)
    log.info("teacher logits on %d rows in %.1fs: %s", logits.shape[0],
             time.perf_counter() - started, path)
    return path, True


def write_logits(path: Path, logits: torch.Tensor, task, inputs=None, **labels: Any) -> None:
    """Write a teacher's ``logits`` on ``task``'s training rows (read from ``inputs``' texts,
    default ``task``'s) where ``distillation`` reads them: safetensors, labelled with both
    splits' digests and ``labels`` (teacher, max_length, ...), written beside and renamed."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({"logits": logits.float().contiguous()}, str(tmp), metadata={
        "rows": str(logits.shape[0]), "train_digest": train_digest(task),
        "teacher_digest": train_digest(task if inputs is None else inputs),
        **{k: str(v) for k, v in labels.items()}, "format": str(FORMAT)})
    tmp.replace(path)


def read_logits(path: str | Path | None) -> tuple[torch.Tensor, dict[str, str]]:
    from safetensors import safe_open

    if not path or not Path(path).is_file():
        raise ConfigError(
            f"distill_logits must name a file of a teacher's logits, but {path!r} does not exist. "
            f"Use pretune distill, which computes it, or leave distill_logits unset."
        )
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("logits"), dict(f.metadata() or {})


@torch.no_grad()
def predict_logits(model, tokenizer, texts, pairs, max_length: int, batch_size: int = 128
                   ) -> torch.Tensor:
    """The model's float32 logits (rows, outputs) for ``texts``, in their order."""
    from pretune.data.collate import Batches
    from pretune.data.tokenize import encode

    enc = encode(texts, pairs, None, tokenizer, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    model.eval()
    out: torch.Tensor | None = None
    for batch in Batches(enc, batch_size, pad_id=pad_id, shuffle=False):
        index = batch.pop("index")
        batch.pop("labels", None)
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
        if out is None:
            out = torch.empty(len(texts), logits.shape[1], dtype=torch.float32)
        out[index] = logits
    return out if out is not None else torch.empty(0, 0)


# --- a student built from the teacher ------------------------------------------------------------

LAYERS_SPEC = re.compile(r"^layers:(.*)$")


def parse_student(spec: str) -> tuple[str, Any]:
    """``("layers", n)`` for ``layers:N``; ``("model", spec)`` for a model id or directory.

    Raises ConfigError for a ``name:value`` spec that is not ``layers:N`` with N a whole number
    from 1 (model ids have no colon)."""
    text = str(spec).strip()
    if not text:
        raise ConfigError("--student must name a model or a spec such as layers:3, but got "
                          "nothing. Pass --student layers:3 or a model id or directory.")
    found = LAYERS_SPEC.match(text)
    if found:
        value = found.group(1).strip()
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(
                f"--student layers:N must give N as a whole number of at least 1, but got "
                f"{text!r}. Pass e.g. --student layers:3."
            )
        return "layers", int(value)
    if ":" in text and not Path(text).expanduser().exists():
        raise ConfigError(
            f"--student must be layers:N or a model id or directory, but got {text!r}. Pass "
            f"e.g. --student layers:3, a model id such as prajjwal1/bert-tiny, or a directory."
        )
    return "model", text


def kept_layers(total: int, keep: int) -> list[int]:
    """``keep`` of ``total`` layers, evenly spaced from the bottom: 6 of 12 is 0, 2, ..., 10."""
    return [i * total // keep for i in range(keep)]


def encoder_layers(model) -> nn.ModuleList | None:
    encoder = getattr(getattr(model, "base_model", None), "encoder", None)
    layers = getattr(encoder, "layer", None)
    return layers if isinstance(layers, nn.ModuleList) else None


def layer_student(model, keep: int):
    """A copy of ``model`` with ``keep`` of its encoder layers (``kept_layers``), weights and
    all else shared from the teacher; BERT-like encoders (``base_model.encoder.layer``)."""
    layers = encoder_layers(model)
    if layers is None:
        raise ConfigError(
            f"--student layers:N keeps layers of a BERT-like encoder (base_model.encoder.layer), "
            f"but the teacher is a {type(model).__name__}, which has none. Pass a smaller model "
            f"id or directory as --student instead."
        )
    if not 1 <= keep < len(layers):
        raise ConfigError(
            f"--student layers:N must keep fewer layers than the teacher's {len(layers)}, but "
            f"got layers:{keep}. Pass N from 1 to {len(layers) - 1}."
        )
    kept = kept_layers(len(layers), keep)
    student = copy.deepcopy(model)
    student.base_model.encoder.layer = nn.ModuleList(
        copy.deepcopy(layers[i]) for i in kept)
    student.config.num_hidden_layers = keep
    if isinstance(getattr(student.config, "layer_types", None), list):
        student.config.layer_types = [student.config.layer_types[i] for i in kept]
    for new, layer in enumerate(student.base_model.encoder.layer):
        for module in layer.modules():  # attention layers that know their own position
            if hasattr(module, "layer_idx"):
                module.layer_idx = new
    return student, kept


def build_layer_student(teacher_dir: str | Path, keep: int, out_dir: str | Path) -> Path:
    """Save ``layer_student`` of the teacher in ``teacher_dir`` to ``out_dir`` (a model
    directory that loads with ``from_pretrained``)."""
    from pretune.models.io import load_model_dir, save_model

    model, tokenizer, _ = load_model_dir(teacher_dir)
    student, kept = layer_student(model, keep)
    return save_model(student, tokenizer, out_dir, {
        "student_of": str(teacher_dir), "kept_layers": kept,
        "teacher_layers": len(encoder_layers(model))})


# --- size, speed and accuracy, side by side --------------------------------------------------------


def size_of(model, model_dir: str | Path) -> dict[str, float]:
    """Parameters (count) and the weights' size on disk (MB) of a saved model."""
    files = list(Path(model_dir).glob("*.safetensors"))
    return {"parameters": int(sum(p.numel() for p in model.parameters())),
            "size_mb": round(sum(f.stat().st_size for f in files) / 1e6, 3)}


@torch.no_grad()
def throughput(models: dict[str, tuple[Any, Any]], texts, pairs, max_length: int, *,
               batch_size: int = 64, rounds: int = 3,
               inputs: dict[str, tuple[Any, Any]] | None = None) -> dict[str, float]:
    """Examples per second of prediction (the forward pass of each batch, tokenized ahead) of
    each of ``models`` (name -> (model, tokenizer)) on ``texts``: the same batches, batch size
    and threads for all, in alternating rounds so that load on the machine hits both alike; the
    best round of each counts (the least disturbed). ``inputs`` (name -> (texts, pairs)) gives
    a model its own version of the same rows (its text preprocessing)."""
    from pretune.data.collate import Batches
    from pretune.data.tokenize import encode

    prepared = {}
    for name, (model, tokenizer) in models.items():
        own_texts, own_pairs = (inputs or {}).get(name, (texts, pairs))
        enc = encode(own_texts, own_pairs, None, tokenizer, max_length)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        batches = []
        for batch in Batches(enc, batch_size, pad_id=pad_id, shuffle=False):
            batch.pop("index")
            batch.pop("labels", None)
            batches.append(batch)
        model.eval()
        model(**batches[-1])  # warm up (allocations, kernels)
        prepared[name] = (model, batches)
    best = {name: 0.0 for name in models}
    for _ in range(rounds):
        for name, (model, batches) in prepared.items():
            started = time.perf_counter()
            for batch in batches:
                model(**batch)
            seconds = max(time.perf_counter() - started, 1e-9)
            best[name] = max(best[name], len(texts) / seconds)
    return {name: round(v, 2) for name, v in best.items()}


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or not np.isfinite(a) or not np.isfinite(b):
        return None
    return round(float(a) / float(b), 4)


__all__ = ["Distillation", "soft_loss", "distillation", "teacher_logits", "read_logits",
           "predict_logits", "parse_student", "kept_layers", "layer_student",
           "build_layer_student", "size_of", "throughput"]
