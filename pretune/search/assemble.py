"""The final model, built from the whole search.

A search trains many models; picking one of them on a small validation set throws the others
away and is itself noisy. So the search keeps the weights of its best few trials
(``keep_trial``: ``RUN/kept/trial-NNNN/``, at most ``keep`` of them) with their validation
outputs, and its end (``assemble``) builds from them:

* **soups across trials**: kept models that share model, head, pooling, transfer strategy and
  text preprocessing are averaged greedily in the order of their scores (``training.soup``);
* **an ensemble** by greedy selection with replacement over their validation outputs
  (``training.ensemble``), written to ``RUN/ensemble.yaml`` for ``pretune predict --ensemble``;
* **the ensemble distilled into one model**: the best trial's settings trained again on the
  training rows with the ensemble's soft labels (``training.distill``), when the time left
  allows one more trial.

Token classification is assembled the same way, from outputs per word: each kept model's tag
probabilities for every word of the validation sentences, read at the word's first sub-token
(``tokens.sentence_outputs``), so that models that window sentences differently line up;
soups and the ensemble are scored by entity F1 on whole sentences, and the student learns the
ensemble's tags of each word on its own training windows (``tokens.on_windows``).

``best/`` then holds whichever single model scores best on the validation data (the best trial,
a soup or the distilled ensemble); its ``pretune.yaml`` (``made_of``), ``plan.yaml``
(``assembly``) and the report say what it is made of and every candidate's score. The whole
assembly is part of the budget: ``reserve`` says how much time the search keeps for it, and
``best/`` holds the best model built so far whenever the time runs out.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass, field, replace as with_fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from pretune.config import Budget, RunConfig
from pretune.data import text_prep
from pretune.data.images import is_image_task
from pretune.data.task import Split
from pretune.data.unlabeled import read_unlabeled
from pretune.errors import ConfigError
from pretune.outdir import atomic_write
from pretune.search import rundir
from pretune.training.metrics import is_better

log = logging.getLogger(__name__)

KEPT_DIR = "kept"  # the best trials' models
ASSEMBLY_DIR = "assembly"  # soups and the distilled ensemble
ENSEMBLE_FILE = "ensemble.yaml"  # the selected ensemble: kept models and their weights
OUTPUTS_FILE = "valid-outputs.npz"  # beside each kept model: its validation outputs and labels
MAX_SHARE = 0.35  # the most of a time budget the assembly may keep for itself
SOUP_SHARE = 0.1  # of a trial's time: what tasting soups and selecting an ensemble take
STUDENT_SHARE = 0.8  # of the time left: what a shortened student may train for (the rest
                     # labels its rows with the ensemble)
MIN_STUDENT_EPOCHS = 1.0  # a student shorter than this is not trained
# Settings that must agree for two models' weights to be averaged: same shapes, same start,
# same inputs.
SOUP_KEYS = ("model", "revision", "head_layers", "head_width", "head_activation", "head_norm",
             "pooling", "transfer", "lowercase", "stopwords", "stem", "modality")


# --- keeping the best trials ------------------------------------------------------------------


@dataclass
class Kept:
    trial: int
    value: float
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> RunConfig:
        return RunConfig.from_dict(self.meta.get("settings") or {})

    def outputs(self) -> tuple[np.ndarray, np.ndarray]:
        with np.load(self.path / OUTPUTS_FILE, allow_pickle=False) as f:
            return f["outputs"], f["labels"]


def kept_path(out: Path, number: int) -> Path:
    """Where trial ``number``'s model is kept."""
    return Path(out) / KEPT_DIR / f"trial-{number:04d}"


def kept_models(out: Path, metric: str, direction: str) -> list[Kept]:
    """The kept trials' models, best first (a directory without its outputs is skipped)."""
    from pretune.models.io import read_meta  # torch loads only when this runs

    found = []
    for path in sorted((Path(out) / KEPT_DIR).glob("trial-*")):
        meta = read_meta(path)
        value = (meta.get("metrics") or {}).get(metric)
        if value is None or meta.get("trial") is None or not (path / OUTPUTS_FILE).is_file():
            continue
        found.append(Kept(int(meta["trial"]), float(value), path, meta))
    return sorted(found, key=lambda k: (-k.value if direction == "maximize" else k.value, k.trial))


def keep_trial(out: Path, number: int, result, task, caches, *, metric: str, direction: str,
               keep: int) -> bool:
    """Save trial ``number``'s model (a ``FitResult``) and its validation outputs under
    ``RUN/kept/`` when it is among the ``keep`` best; drop the models it pushes out."""
    from pretune.models.io import save_model  # torch loads only when this runs
    from pretune.training.run import run_metadata, valid_outputs

    value = result.metrics.get(metric)
    if keep <= 0 or value is None or not math.isfinite(value):
        return False
    kept = kept_models(out, metric, direction)
    if len(kept) >= keep and not is_better(value, kept[keep - 1].value, metric):
        return False
    outputs, labels = valid_outputs(result, task, caches)
    meta = run_metadata(result.config, task, result.train_result)
    meta.update(trial=number)
    path = save_model(result.model, result.tokenizer, kept_path(out, number), meta)
    # per word, padded to the longest sentence: mostly zeros when one sentence is long
    save = np.savez_compressed if task.kind == "token" else np.savez
    try:
        save(path / OUTPUTS_FILE, outputs=outputs, labels=labels)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)  # a model without its outputs is never used
        raise
    for extra in kept_models(out, metric, direction)[keep:]:
        shutil.rmtree(extra.path, ignore_errors=True)
    return True


def disk_bytes(weights: int, keep: int) -> int:
    """What keeping ``keep`` models of ``weights`` bytes takes on disk (with their tokenizers)."""
    return keep * (weights + 2**20)


def reserve(budget: Budget, trial_seconds: float | None, enabled: bool,
            unlabeled_share: float = 0.0, distill: bool = True) -> float:
    """Seconds of a time budget kept for the assembly: a distillation (about one trial, longer
    by ``unlabeled_share``, the unlabeled texts per training row, that it may learn from too)
    and the tasting, at most ``MAX_SHARE`` of the budget; the tasting alone without
    ``distill`` or when not even a distillation on the training rows fits; nothing where fewer
    than two trials fit the budget (no two models to assemble; on large data the first trial
    then runs until the deadline)."""
    if not enabled or budget.seconds is None or not trial_seconds:
        return 0.0
    if budget.seconds < 2 * trial_seconds:
        return 0.0
    most = MAX_SHARE * budget.seconds
    if distill and trial_seconds * (1 + SOUP_SHARE) <= most:
        return min(trial_seconds * (1 + unlabeled_share + SOUP_SHARE), most)
    return min(trial_seconds * SOUP_SHARE, most)


# --- the assembly ---------------------------------------------------------------------------------


@dataclass
class Candidate:
    kind: str  # trial | soup | ensemble | distilled
    members: list[int]  # trial numbers
    metrics: dict[str, float]
    path: Path | None = None  # a single model's directory (none for the ensemble)
    weights: list[int] | None = None  # the ensemble's

    def to_dict(self, metric: str) -> dict[str, Any]:
        out = {"kind": self.kind, "members": self.members, metric: self.metrics.get(metric)}
        if self.weights is not None:
            out["weights"] = self.weights
        return out


class _Clock:
    def __init__(self, deadline: float | None):
        self.deadline = deadline

    def left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.monotonic()

    def over(self) -> bool:
        return self.left() <= 0


# Why a task gets no final assembly (recorded in plan.yaml as ``assembly: {skipped: ...}``).
# Every task kind has one today; a kind that cannot be assembled names its reason here.
SKIPPED: dict[str, str] = {}


def skipped_for(task) -> dict[str, str] | None:
    """``{"skipped": reason}`` when the final assembly does not apply to ``task``, else None."""
    reason = SKIPPED.get(getattr(task, "kind", "classification"))
    return None if reason is None else {"skipped": reason}


def assemble(out: Path, task, caches, *, metric: str, direction: str,
             deadline: float | None = None, distill: bool = True, soups: bool = True,
             adopt: bool = True) -> dict[str, Any] | None:
    """Build soups, an ensemble and its distillation from the kept trials; put the best
    single model in ``best/``. ``deadline`` is a ``time.monotonic()`` time. Returns what
    ``plan.yaml`` records (None when fewer than two models were kept). After a refit
    (``search.refit``) only the ensemble is built and best/ is left as it is (``soups``,
    ``distill`` and ``adopt`` off)."""
    from pretune.training import objectives  # torch loads only when this runs

    clock = _Clock(deadline)
    kept = kept_models(out, metric, direction)
    if len(kept) < 2:
        log.info("assembly: %d kept model(s), nothing to combine", len(kept))
        return None
    started = time.monotonic()
    lead = kept[0]
    config = lead.config
    objective = objectives.for_task(task, config.train,
                                    standardize=config.data.standardize_target)
    read = [k.outputs() for k in kept]
    outputs, labels = [o for o, _ in read], read[0][1]
    candidates = [Candidate("trial", [lead.trial], _lead_metrics(lead, outputs[0], labels,
                                                                 objective, task), path=lead.path)]
    candidates.append(_ensemble(kept, outputs, labels, objective, config, clock))
    _write_ensemble(out, kept, candidates[-1], metric, task.kind)
    for group in _groups(kept) if soups else []:
        if clock.over():
            break
        soup = _step("a soup", _soup, out, group, task, caches, metric, clock)
        if soup is not None:
            candidates.append(soup)
    ensemble = candidates[1]
    if distill and sum(1 for w in ensemble.weights if w) > 1:
        student = _step("the distilled ensemble", _distill, out, kept, ensemble, objective, task,
                        caches, metric, clock)
        if student is not None:
            candidates.append(student)
    if not adopt:  # best/ holds a refit model: the ensemble is for predict --ensemble
        summary = {"chosen": "refit", "members": [],
                   "seconds": round(time.monotonic() - started, 1),
                   "candidates": [c.to_dict(metric) for c in candidates]}
        rundir.update_plan(out, assembly=summary)
        return summary
    chosen = _adopt(out, candidates, metric, task)
    summary = {"chosen": chosen.kind, "members": chosen.members,
               "seconds": round(time.monotonic() - started, 1),
               "candidates": [c.to_dict(metric) for c in candidates]}
    rundir.update_plan(out, assembly=summary)
    log.info("final model: %s of trials %s (%s %.4f); candidates: %s", chosen.kind,
             chosen.members, metric, chosen.metrics.get(metric, float("nan")),
             "; ".join(f"{c.kind} {c.metrics.get(metric, float('nan')):.4f}" for c in candidates))
    return summary


def _lead_metrics(lead: Kept, outputs: np.ndarray, labels: np.ndarray, objective,
                  task) -> dict[str, float]:
    """The best trial's validation metrics as the other candidates are scored. A token model's
    trial scored the words window by window; here every candidate is scored on whole
    sentences from its per-word outputs (the same numbers unless a sentence was longer than
    max_length, whose entity across two windows a window-by-window count splits)."""
    metrics = dict(lead.meta.get("metrics") or {})
    if getattr(task, "kind", None) == "token":
        from pretune.training import ensemble as ens  # torch loads only when this runs

        metrics.update(ens.score(objective, outputs, labels, lead.config.train))
    return metrics


def _step(what: str, build, *args):
    """One candidate of the assembly; a failure loses that candidate only (a warning)."""
    try:
        return build(*args)
    except Exception as err:  # noqa: BLE001 - the other candidates and best/ stand
        log.warning("assembly: %s could not be built (%s: %s)", what, type(err).__name__, err)
        return None


def _ensemble(kept: list[Kept], outputs, labels, objective, config: RunConfig,
              clock: "_Clock") -> Candidate:
    from pretune.training import ensemble  # torch loads only when this runs

    # (a token task's rounds score entity F1 on every validation sentence: about a minute for
    # 25 rounds of 5 models on CoNLL's 3,250)
    picked = ensemble.select(outputs, labels, objective, config.train, should_stop=clock.over)
    members = [k.trial for k, w in zip(kept, picked.weights) if w]
    return Candidate("ensemble", members, picked.metrics, weights=picked.weights)


def _write_ensemble(out: Path, kept: list[Kept], candidate: Candidate, metric: str,
                    kind: str) -> None:
    members = [{"path": f"{KEPT_DIR}/{k.path.name}", "trial": k.trial, "weight": w}
               for k, w in zip(kept, candidate.weights) if w]
    text = yaml.safe_dump({"task": kind, "metric": metric,
                           "metrics": {k: float(v) for k, v in candidate.metrics.items()},
                           "members": members}, sort_keys=False)
    atomic_write(Path(out) / ENSEMBLE_FILE, text)


def _groups(kept: list[Kept]) -> list[list[Kept]]:
    """Kept models whose weights can be averaged, in groups of two or more, best first."""
    groups: dict[tuple, list[Kept]] = {}
    for k in kept:
        flat = k.config.flat()
        groups.setdefault(tuple(str(flat.get(key)) for key in SOUP_KEYS), []).append(k)
    return [g for g in groups.values() if len(g) > 1]


def _soup(out: Path, group: list[Kept], task, caches, metric: str, clock: _Clock
          ) -> Candidate | None:
    """The greedy soup of ``group`` (best first), saved under ``RUN/assembly/``; None when no
    second model joined."""
    from pretune.models.io import save_model  # torch loads only when this runs
    from pretune.training.run import model_outputs
    from pretune.training import ensemble as ens, objectives
    from pretune.training.soup import MAX_SOUP_BYTES, Ingredient, greedy_soup

    if _weights_size(group[0].path) * (len(group) + 2) > MAX_SOUP_BYTES:
        log.info("assembly: a soup of %d models this size would not fit in memory; skipped",
                 len(group))
        return None
    model, tokenizer, meta = _load(group[0].path)
    config = group[0].config
    objective = objectives.for_task(task, config.train, standardize=config.data.standardize_target)

    def taste(state) -> dict[str, float]:
        model.load_state_dict(state, strict=False)
        outputs, labels = model_outputs(model, tokenizer, config, task, caches)
        return ens.score(objective, outputs, labels, config.train)

    ingredients = [Ingredient(k.value, dict(k.meta.get("metrics") or {}), _weights(k.path),
                              k.trial) for k in group]
    made = greedy_soup(ingredients, taste, metric, should_stop=clock.over)
    if len(made.members) < 2:
        return None
    model.load_state_dict(made.state, strict=False)
    members = [int(m) for m in made.members]
    task_meta = dict(meta.get("task") or {})
    if task_meta.get("threshold_tuned") and "threshold" in made.metrics:  # multi-label
        task_meta["threshold"] = float(made.metrics["threshold"])
    meta = {**meta, "metrics": dict(made.metrics), "task": task_meta,
            "made_of": {"kind": "soup", "trials": members}}
    path = save_model(model, tokenizer, Path(out) / ASSEMBLY_DIR / f"soup-{members[0]:04d}", meta)
    return Candidate("soup", members, made.metrics, path=path)


def _distill(out: Path, kept: list[Kept], ensemble: Candidate, objective, task, caches,
             metric: str, clock: _Clock) -> Candidate | None:
    """The lead trial's settings trained again on the ensemble's soft labels, on the training
    rows and as many ``--unlabeled`` texts as the time left allows, for fewer epochs when the
    time left is shorter than the lead trial took (``student_epochs``); None when the data are
    images or not even that fits."""
    from pretune.training import objectives  # torch loads only when this runs
    from pretune.training.run import fit

    lead = kept[0]
    took = float((lead.meta.get("training") or {}).get("seconds") or 0.0)
    if is_image_task(task):
        log.info("assembly: distilling an ensemble needs texts; image runs skip it")
        return None
    config = student_epochs(lead.config, took, clock.left())
    if config is None:
        log.info("assembly: %.0fs left, less than %g epoch(s) of the lead trial take (%.0fs for "
                 "all of them): no distillation", clock.left(), MIN_STUDENT_EPOCHS, took)
        return None
    members = [(k, w) for k, w in zip(kept, ensemble.weights) if w]
    extra = _unlabeled(config, task, took, clock)
    wide = _with_rows(task, extra)  # the training rows, then the unlabeled texts
    outputs = _ensemble_outputs(members, task, wide, caches)
    if extra:  # the unlabeled rows are labelled by the ensemble (its soft labels teach too)
        wide = _with_rows(task, extra, _labels_of(objective, outputs[len(task.train):]))
    student_objective = objectives.for_task(wide, config.train,
                                            standardize=config.data.standardize_target)
    student_view = text_prep.apply_to_task(wide, config.data)
    if task.kind == "token":  # the ensemble's words, on the student's own training windows
        logits_file = _token_teacher_file(out, student_objective, outputs, student_view, config,
                                          lead.path)
    else:
        logits_file = _teacher_file(out, student_objective, outputs, student_view)
    student = config.with_settings({"distill_logits": str(logits_file),
                                    "seed": config.train.seed + 1})
    path = Path(out) / ASSEMBLY_DIR / "distilled"
    result = fit(student, path, task=wide, should_stop=clock.over, caches=caches)
    if result.path is None:
        return None
    metrics, rescored = dict(result.metrics), {}
    if task.kind == "token":  # scored on whole sentences, as the other candidates are
        metrics.update(_sentence_scores(result, objective, task, caches))
        rescored = {"metrics": metrics}
    mark(result.path, {"kind": "distilled", "trials": ensemble.members,
                        "weights": [w for w in ensemble.weights if w],
                        "unlabeled_rows": len(extra)}, **rescored)
    return Candidate("distilled", list(ensemble.members), metrics, path=result.path)


def _sentence_scores(result, objective, task, caches) -> dict[str, float]:
    """A freshly trained token model's validation metrics from its per-word outputs."""
    from pretune.training import ensemble as ens  # torch loads only when this runs
    from pretune.training.run import model_outputs

    outputs, labels = model_outputs(result.model, result.tokenizer, result.config, task, caches)
    return ens.score(objective, outputs, labels, result.config.train)


def student_epochs(config: RunConfig, took: float, left: float) -> RunConfig | None:
    """The lead trial's settings for its student: all its epochs when the time left allows
    them (``took``: what the trial took), else as many as ``STUDENT_SHARE`` of the time left
    pays for, its schedule fitted to them; None when that is less than ``MIN_STUDENT_EPOCHS``
    (a search whose lead trial ran long leaves a shorter student rather than none)."""
    epochs = float(config.train.epochs)
    if left >= took:
        return config
    fits = epochs * STUDENT_SHARE * left / max(took, 1e-9)
    if fits < MIN_STUDENT_EPOCHS:
        return None
    return config.with_settings({"epochs": round(fits, 2)})


def _unlabeled(config: RunConfig, task, took: float, clock: _Clock) -> list[str]:
    """The ``--unlabeled`` texts the student can also learn from in the time left (a student
    epoch grows with its rows); none for text pairs, which an unlabeled file cannot give."""
    if not config.data.unlabeled or task.train.pairs is not None or task.kind == "token":
        return []  # (a token student would need words tagged, not texts)

    texts = read_unlabeled(config.data.unlabeled, config.data.text_column)
    room = clock.left() / max(took, 1e-9) - 1.0 - SOUP_SHARE
    fits = len(texts) if math.isinf(room) else max(0, int(len(task.train) * room))
    if fits < len(texts):
        log.info("assembly: the student learns from %d of %d unlabeled texts in the time left",
                 fits, len(texts))
    return texts[:fits]


def _with_rows(task, texts: list[str], labels: np.ndarray | None = None):
    """``task`` whose training split is followed by ``texts`` (labelled ``labels``, else by
    zeros: only their texts are read)."""

    if not texts:
        return task
    train = task.train.labels
    if labels is None:
        labels = np.zeros((len(texts), *train.shape[1:]), dtype=train.dtype)
    return with_fields(task, train=Split(list(task.train.texts) + list(texts), None,
                                         np.concatenate([train, labels.astype(train.dtype)])))


def _labels_of(objective, outputs: np.ndarray) -> np.ndarray:
    """The ensemble's hard labels: its class, its labels at one half, its value."""
    if objective.kind == "classification":
        return outputs.argmax(axis=1)
    if objective.kind == "multilabel":
        return (outputs >= 0.5).astype(np.float32)
    return outputs


def _ensemble_outputs(members, task, wide, caches) -> np.ndarray:
    """The weighted mean of the members' outputs on ``wide``'s training rows, each read as
    it was trained on ``task`` (a regression model's values in ``task``'s units)."""
    from pretune.training import ensemble as ens, objectives  # torch loads only when this runs
    from pretune.training.run import model_outputs

    outputs, used = [], []
    for k, w in members:
        model, tokenizer, _ = _load(k.path)
        own = objectives.for_task(task, k.config.train,
                                  standardize=k.config.data.standardize_target)
        outputs.append(model_outputs(model, tokenizer, k.config, wide, caches, split="train",
                                     objective=own)[0])
        used.append(w)
    return ens.average(outputs, used)


def _teacher_file(out: Path, objective, outputs: np.ndarray, student_task) -> Path:
    """The ensemble's logits on the student's training rows, as ``training.distill`` reads
    them."""
    import torch  # torch loads only when this runs

    from pretune.training import ensemble as ens
    from pretune.training.distill import write_logits

    logits = ens.as_logits(objective, outputs)
    if logits.ndim == 1:
        logits = logits[:, None]
    path = Path(out) / ASSEMBLY_DIR / "ensemble-logits.safetensors"
    write_logits(path, torch.as_tensor(logits), student_task, teacher="ensemble")
    return path


def _token_teacher_file(out: Path, objective, outputs: np.ndarray, student_task,
                        config: RunConfig, lead_dir: Path) -> Path:
    """The ensemble's per-word logits on the training sentences, placed on the windows the
    student (the lead trial's settings and tokenizer) trains on (``tokens.on_windows``), as
    ``training.distill`` reads them."""
    import torch  # torch loads only when this runs

    from pretune.data import tokens
    from pretune.models.load import load_tokenizer
    from pretune.training import ensemble as ens
    from pretune.training.distill import write_logits
    from pretune.training.run import token_windows

    tokenizer = load_tokenizer(str(lead_dir), is_local=True)
    windows = token_windows(config, student_task, tokenizer, "train", training=True)
    logits = tokens.on_windows(windows, ens.as_logits(objective, outputs))
    path = Path(out) / ASSEMBLY_DIR / "ensemble-logits.safetensors"
    write_logits(path, torch.as_tensor(logits), student_task, teacher="ensemble",
                 sentences=len(student_task.train.labels))
    return path


def mark(path: Path, made_of: dict[str, Any], **fields: Any) -> None:
    """Add ``made_of`` (and ``fields``) to the pretune.yaml of the model in ``path``."""
    from pretune.models.io import META_FILE, read_meta  # torch loads only when this runs

    meta = read_meta(path)
    meta.update(fields, made_of=made_of)
    atomic_write(path / META_FILE, yaml.safe_dump(meta, sort_keys=False, allow_unicode=True))


def _load(path: Path):
    """A saved model (and its tokenizer, pretune.yaml) on the device trials run on."""
    from pretune.models.io import load_model_dir  # torch loads only when this runs
    from pretune.training.device import pick_device

    model, tokenizer, meta = load_model_dir(path)
    return model.to(pick_device()), tokenizer, meta


def _weights_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def _weights(path: Path) -> dict[str, Any]:
    """Every tensor of a saved model (one safetensors file or shards)."""
    from safetensors.torch import load_file  # torch loads only when this runs

    state: dict[str, Any] = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(str(file)))
    return state


def _adopt(out: Path, candidates: list[Candidate], metric: str, task) -> Candidate:
    """Put the best single-model candidate in ``best/`` when it beats what is there; return
    the candidate ``best/`` holds."""
    from pretune.models.io import read_meta  # torch loads only when this runs

    chosen = candidates[0]
    for c in candidates[1:]:
        if c.path is not None and is_better(c.metrics.get(metric), chosen.metrics.get(metric),
                                            metric):
            chosen = c
    best = Path(out) / rundir.BEST_DIR
    held = read_meta(best)
    record = {"candidates": [c.to_dict(metric) for c in candidates]}
    if chosen.kind == "trial" or not is_better(chosen.metrics.get(metric),
                                               (held.get("metrics") or {}).get(metric), metric):
        if not (best / "config.json").is_file():
            return candidates[0]
        # best/ stays (a trial, or what an earlier start of the search built): say what it is
        # and what was tried
        prior = held.get("made_of") or {}
        kind, trials = prior.get("kind", "trial"), prior.get("trials") or [held.get("trial")]
        mark(best, {"kind": kind, "trials": trials, **record})
        return Candidate(kind, list(trials), dict(held.get("metrics") or {}), path=best)
    staged = best.with_name(f"{rundir.BEST_DIR}.tmp-assembly")
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(chosen.path, staged)
    mark(staged, {"kind": chosen.kind, "trials": chosen.members, **record},
          trial=chosen.members[0])
    _write_predictions(staged, chosen, task)
    rundir.replace_best(out, staged)
    return chosen


def _write_predictions(directory: Path, chosen: Candidate, task) -> None:
    """valid-predictions.csv for the new best/ (the report's confusion matrix)."""
    # torch loads only when this runs
    from pretune.training.run import (_objective_of, decision_threshold, model_outputs,
                                      predictions_frame)

    try:
        model, tokenizer, meta = _load(directory)
        config = RunConfig.from_dict(meta.get("settings") or {})
        own = _objective_of(task.kind, meta.get("task") or {})  # its own target scaling
        outputs, labels = model_outputs(model, tokenizer, config, task, objective=own)
        frame = predictions_frame(outputs, labels, task.label_names, task.kind,
                                  decision_threshold(config, chosen.metrics))
        frame.insert(0, "trial", chosen.members[0])
        atomic_write(directory / "valid-predictions.csv", frame.to_csv(index=False))
    except Exception as err:  # noqa: BLE001 - a report detail must not stop a search
        log.warning("could not write the final model's validation predictions: %s", err)


# --- serving the ensemble ---------------------------------------------------------------------


def predict_ensemble(run: str | Path, source: str | Path, *, output: str | Path | None = None,
                     **options: Any):
    """``pretune predict RUN --ensemble``: each member of ``RUN/ensemble.yaml`` predicts
    ``source`` (as ``training.run.predict`` does) and their outputs are averaged with the
    ensemble's weights: probabilities for classes and labels, values for regression, each
    word's tag probabilities for token classification (its tags then read as
    ``pretune predict`` reads one model's)."""

    # torch loads only when this runs
    from pretune.training.run import label_sets, predict, table_format, write_table

    run = Path(run).expanduser()
    spec_file = run / ENSEMBLE_FILE
    if not spec_file.is_file():
        raise ConfigError(
            f"--ensemble needs a run directory whose search built an ensemble ({ENSEMBLE_FILE}), "
            f"but {run} has none. Pass the run directory of a search that kept two or more "
            f"models, or leave out --ensemble.")
    spec = yaml.safe_load(spec_file.read_text(encoding="utf-8")) or {}
    members = spec.get("members") or []
    missing = [m["path"] for m in members if not (run / m["path"] / "config.json").is_file()]
    if missing:
        raise ConfigError(
            f"Every member of the ensemble must be kept in the run directory, but {missing[0]} "
            f"is missing from {run}. Run the search again to rebuild {ENSEMBLE_FILE}.")
    if output is not None:
        table_format(Path(output))
    weights = np.asarray([float(m["weight"]) for m in members])
    weights = weights / weights.sum()
    if spec.get("task") == "token":
        result = _token_ensemble([run / m["path"] for m in members], weights, source, options)
        if output is not None:
            write_table(result, Path(output))
        return result
    frames = [predict(run / m["path"], source, **options) for m in members]
    result = frames[0].copy()
    if spec.get("task") == "regression":
        result["prediction"] = sum(w * f["prediction"].to_numpy() for w, f in zip(weights, frames))
    else:
        columns = [c for c in result.columns if c.startswith("prob_")]
        probs = sum(w * f[columns].to_numpy() for w, f in zip(weights, frames))
        names = [c[len("prob_"):] for c in columns]
        result[columns] = probs
        if spec.get("task") == "multilabel":
            threshold = float((spec.get("metrics") or {}).get("threshold", 0.5))
            result["prediction"] = label_sets(probs, names, threshold)
        else:
            result["prediction"] = pd.Series([names[i] for i in probs.argmax(axis=1)])
    if output is not None:
        write_table(result, Path(output))
    return result


def _token_ensemble(paths: list[Path], weights: np.ndarray, source, options: dict[str, Any]
                    ) -> pd.DataFrame:
    """Each token model's per-word tag probabilities on ``source``, averaged with
    ``weights`` (tags in the first model's order), read as tags (and entities)."""
    # torch loads only when this runs
    from pretune.data import tokens
    from pretune.models.io import load_model_dir
    from pretune.training.predict import word_probabilities

    total, names = None, None
    for path, weight in zip(paths, weights):
        model, tokenizer, meta = load_model_dir(
            path, allow_pickle=options.get("allow_pickle", False),
            trust_remote_code=options.get("trust_remote_code", False))
        per_word, own, words, texts, result = word_probabilities(
            model, tokenizer, meta.get("settings") or {}, str(source),
            options.get("batch_size", 64), options.get("text_column"),
            options.get("precision", "fp32"), options.get("on_batch"))
        names = names or own
        order = [own.index(n) for n in names]
        part = [weight * p[:, order] for p in per_word]
        total = part if total is None else [a + b for a, b in zip(total, part)]
    return tokens.add_tags(result, total, names, texts, words,
                           entities=bool(options.get("entities", False)))
