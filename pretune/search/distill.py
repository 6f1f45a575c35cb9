"""``pretune distill``: a smaller student trained from a finished search's best model.

The teacher is the run's ``best/`` model; the data and the settings are the run's own (its
``pretune.yaml``; the data split, ``max_length`` and text preprocessing of the best model).
Distillation supports text runs (classification, regression, multi-label, token
classification: the teacher's tags of each word, on the student's windows, ``word_logits``);
an image run is refused before any work.

Text preprocessing (``lowercase``, ``stopwords``, ``stem``; ``pretune.data.text_prep``) follows
one rule: every model sees the texts as it was trained on them. The teacher's logits on the
training split are computed on the texts preprocessed as the teacher's ``best/pretune.yaml``
says (as ``pretune predict`` would), and so is its validation score. The student inherits the
teacher's preprocessing (its base settings hold it, whether the teacher's search pinned or
searched it) unless the student's ``fixed`` pins another; either way the student's
preprocessing is one fixed value for all its trials, and the logits file is labelled with the
student's training texts (rows line up one to one, since preprocessing rewrites each text on
its own), so the student's training accepts it. The logits are computed once and cached in the
run's ``cache/``, keyed by the teacher, both sets of texts and ``max_length``.

The student gets its own short search (``run_tune``) in its own run directory, over the default
space plus ``distill_alpha`` and ``distill_temperature``, with the distillation loss
(``pretune.training.distill``). At the end teacher and student are compared side by side on
the validation split: parameters, size on disk, the task's main metrics (``REPORT_METRICS``,
plus the run's metric), and prediction speed; the comparison is written to ``distill.yaml`` in
the student's run directory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from pretune.config import RunConfig, TuneConfig, validate
from pretune.data import text_prep
from pretune.data.task import load_task
from pretune.data.tokenize import encode
from pretune.errors import ConfigError
from pretune.outdir import atomic_write
from pretune.search import rundir
from pretune.search.space import resolve_space
from pretune.search.study import run_tune

log = logging.getLogger(__name__)

DISTILL_DIR = "distill"  # the student's run directory inside the teacher's, by default
REPORT_FILE = "distill.yaml"
WORD_LOGITS_FILE = "teacher-word-logits.safetensors"  # token runs: on the student's windows
STUDENT_INIT_DIR = "student-init"  # a layers:N student before training, in the student's run
# The student's search adds these to the default space (Hinton et al. 2015 use T from 1 to 20;
# 1 to 8 covers what small-model distillation papers report as best).
DISTILL_SPACE: dict[str, Any] = {
    "distill_alpha": {"low": 0.0, "high": 1.0},
    "distill_temperature": {"low": 1.0, "high": 8.0},
}
# The validation metrics the comparison reports for each task (the run's metric is added).
REPORT_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy",), "regression": ("r2", "mse"), "multilabel": ("f1_micro",),
    "token": ("entity_f1",)}
# The settings of the best model that the student inherits: the split, the length the
# teacher's logits were computed at, and the text preprocessing.
INHERITED = ("max_length", "data_seed", "lowercase", "stopwords", "stem")


@dataclass
class DistillResult:
    """The student's search and the comparison with its teacher."""

    path: Path  # the student's run directory
    student_path: Path  # its best model
    teacher_path: Path
    metric: str
    teacher: dict[str, Any]  # parameters, size_mb, the metrics (report["metrics"]), examples_per_s
    student: dict[str, Any]
    ratios: dict[str, Any]  # student / teacher
    tune: Any = None  # the student's TuneResult
    logits_computed: bool = False  # whether this call computed the teacher's logits
    report: dict[str, Any] = field(default_factory=dict)  # distill.yaml's content

    @property
    def metrics(self) -> dict[str, float]:
        """Every validation metric of the student's best checkpoint (from its search)."""
        return dict(self.tune.best_metrics) if self.tune is not None else {}


def teacher_run(run: str | Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """The run directory, its record (pretune.yaml) and the best model's pretune.yaml."""
    from pretune.models.io import read_meta  # torch loads only when this runs

    path = Path(run).expanduser()
    record = rundir.read_record(path) if path.is_dir() else {}
    if not isinstance(record.get("settings"), Mapping):
        raise ConfigError(
            f"pretune distill needs the run directory of a search (with pretune.yaml), but "
            f"{run} {'is not one' if path.is_dir() else 'does not exist'}. Pass the --out "
            f"directory of pretune tune."
        )
    best = path / rundir.BEST_DIR
    if not (best / "config.json").is_file():
        raise ConfigError(
            f"pretune distill teaches from a run's best model, but {run} has no best/ model yet. "
            f"Let the search complete a trial (pretune tune with a larger --budget) first."
        )
    return path, record, read_meta(best)


def refuse_images(run: Path, record: Mapping[str, Any], best_meta: Mapping[str, Any]) -> None:
    """Raise ConfigError when the run's data are images: distillation takes text runs only."""
    modalities = {((m.get("settings") or {}).get("data") or {}).get("modality")
                  for m in (record, best_meta) if isinstance(m.get("settings"), Mapping)}
    if "image" in modalities:
        raise ConfigError(
            f"pretune distill supports text runs only (classification, regression, multi-label), "
            f"but {run} is an image run. To get a smaller image model, run pretune tune with a "
            f"smaller --model on the same data."
        )


def student_base(record: Mapping[str, Any], best_meta: Mapping[str, Any]) -> RunConfig:
    """The settings the student's trials share: the run's, with the data split, max_length and
    text preprocessing of the teacher's best model (``INHERITED``), so that its logits line up
    with the rows and the student reads the texts as the teacher did."""
    base = RunConfig.from_dict(record["settings"])
    best_settings = best_meta.get("settings") or {}
    best_data = best_settings.get("data") if isinstance(best_settings, Mapping) else None
    if isinstance(best_data, Mapping):
        base = base.with_settings({f"data.{k}": v for k, v in best_data.items()
                                   if k in INHERITED and v is not None})
    return base


def distill(
    run: str | Path,
    *,
    student: str = "layers:3",
    budget: str | None = "5m",
    out: str | Path | None = None,
    fixed: Mapping[str, Any] | None = None,
    priors: bool | None = None,
    lr_range_test: bool | None = None,
    seed_check: int | None = None,
    speed_batch_size: int | None = None,
    on_trial: Callable[[Any], None] | None = None,
    on_plan: Callable[[Any], None] | None = None,
    progress: Any = None,
) -> DistillResult:
    """Distill the best model of the search in ``run`` into ``student`` within ``budget``.

    ``student`` is ``layers:N`` (the teacher's encoder with N of its layers, evenly spaced, for
    BERT-like models) or a model id or directory. ``out`` is the student's run directory
    (default ``run/distill``); running again with the same ``out`` continues its search.
    ``fixed`` pins settings of the student's search (``{"distill_alpha": 0}`` trains it on
    the labels alone; ``{"stem": "none"}`` gives the student other text preprocessing than
    the teacher's, which it inherits otherwise). Text runs only: an image run raises
    ConfigError before any work. Returns a ``DistillResult``; ``out/distill.yaml`` holds the
    comparison.
    """
    from pretune.training import distill as kd  # torch loads only when this runs

    kind, value = kd.parse_student(student)
    path, record, best_meta = teacher_run(run)
    refuse_images(path, record, best_meta)
    teacher_dir = path / rundir.BEST_DIR
    out = Path(out).expanduser() if out is not None else path / DISTILL_DIR
    if out.resolve() == path.resolve():
        raise ConfigError(
            f"--out must be a directory of its own for the student's search, but got the "
            f"teacher's run {path}. Leave --out out (it defaults to {path / DISTILL_DIR})."
        )
    space = student_space(kind, value)
    base, task, views, settings = prepare(path, best_meta, student_base(record, best_meta),
                                          space, fixed)
    student_model, logits_path, computed = teach(kind, value, teacher_dir, out, views,
                                                 base.data.max_length, path / rundir.CACHE_DIR,
                                                 batch_size=base.train.eval_batch_size,
                                                 student=settings, raw=task)
    base = base.with_settings({"model": student_model,
                               "distill_logits": str(Path(logits_path).resolve())})
    options = dict(budget=budget, priors=priors, lr_range_test=lr_range_test,
                   seed_check=seed_check)
    # refit=False: the student's logits cover the training rows alone, and it is compared with
    # the teacher on the validation rows
    tune = TuneConfig(refit=False, **{k: v for k, v in options.items() if v is not None})
    result = run_tune(base, tune, out, space=space, fixed=dict(fixed or {}),
                      on_trial=on_trial, on_plan=on_plan, progress=progress,
                      space_source="the distillation space")
    done = dict(path=out, student_path=out / rundir.BEST_DIR, teacher_path=teacher_dir,
                metric=result.metric, tune=result, logits_computed=computed)
    if result.best_trial is None:
        return DistillResult(teacher={}, student={}, ratios={}, **done)
    report = compare(teacher_dir, out / rundir.BEST_DIR, task, result.metric,
                     batch_size=speed_batch_size or base.train.eval_batch_size,
                     threads=base.train.threads)
    if (best_meta.get("made_of") or {}).get("kind") == "refit":
        log.warning("the teacher was refit on the training and validation rows: its validation "
                    "scores in distill.yaml are on rows it trained on")
        report["teacher_trained_on_valid"] = True
    report.update(student_spec=str(student), teacher_run=str(path.resolve()),
                  teacher_logits=str(Path(logits_path).resolve()),
                  student_settings={k: v for k, v in result.best_params.items()},
                  student_trial=result.best_trial)
    atomic_write(out / REPORT_FILE, yaml.safe_dump(report, sort_keys=False))
    return DistillResult(teacher=report["teacher"], student=report["student"],
                         ratios=report["ratios"], report=report, **done)


def student_space(kind: str, value: Any) -> dict[str, Any]:
    """The student's space file: the default space plus ``DISTILL_SPACE``; a ``layers:N``
    student freezes some of its layers under freeze_bottom, never all."""
    space = dict(DISTILL_SPACE)
    if kind == "layers":
        space["freeze_layers"] = {"low": 1, "high": min(4, value - 1)} if value >= 3 else None
    return space


def prepare(path: Path, best_meta: Mapping[str, Any], base: RunConfig, space: Mapping[str, Any],
            fixed: Mapping[str, Any] | None):
    """The student's base settings (``max_length`` resolved), the run's data as read (no
    preprocessing), the data as each side sees it: ``{"teacher": ..., "student": ...}``,
    the training and validation texts preprocessed as the teacher was trained, and as the
    student will be, and the student's settings: its base settings with ``fixed`` pinned."""
    from pretune.training.run import data_seed  # torch loads only when this runs

    validate(base)
    best_settings = best_meta.get("settings") or {}
    task_kind = (best_meta.get("task") or {}).get("kind", "classification")
    task = load_task(base.data, data_seed(base))
    if task.kind != task_kind:
        raise ConfigError(
            f"The teacher in {path / rundir.BEST_DIR} was trained for {task_kind}, but the run's "
            f"data reads as {task.kind}. Distill from a run whose data has not changed."
        )
    max_length = base.data.max_length or int((best_settings.get("data") or {}).get(
        "max_length") or 128)
    base = base.with_settings({"max_length": max_length})
    _, pinned = resolve_space(space, fixed, base, source="the distillation space")
    student = base.with_settings(pinned)
    views = {"teacher": text_prep.apply_to_task(task, RunConfig.from_dict(best_settings).data),
             "student": text_prep.apply_to_task(task, student.data)}
    return base, task, views, student


def teach(kind: str, value: Any, teacher_dir: Path, out: Path, views: Mapping[str, Any],
          max_length: int, cache_dir: Path, *, batch_size: int, student: RunConfig | None = None,
          raw=None) -> tuple[str, Path, bool]:
    """The student's model (a ``layers:N`` copy of the teacher, built in ``out`` once, or the
    named one) and the teacher's logits on the training rows: ``(model, logits file, computed
    now)``. The teacher reads ``views["teacher"]``; the file is labelled with the rows of
    ``views["student"]``, which the student trains on. Token classification: the teacher's
    per-word logits, on the windows the student trains on (``student``: its settings; ``raw``:
    the data as read)."""
    from pretune.training import distill as kd  # torch loads only when this runs

    logits = dict(task=views["student"], inputs=views["teacher"], max_length=max_length,
                  cache_dir=cache_dir, batch_size=batch_size)
    words = views["student"].kind == "token"
    if kind != "layers" and not words:
        return (value, *kd.teacher_logits(teacher_dir, **logits))
    from pretune.models.io import load_model_dir  # torch loads only when this runs

    model, tokenizer, _ = load_model_dir(teacher_dir)
    init = out / STUDENT_INIT_DIR
    if kind == "layers" and not (init / "config.json").is_file():
        kd.layer_student(model, value)  # a bad N or model fails before the logits
    if words:
        logits_path = word_logits(teacher_dir, model, tokenizer, raw, views["student"],
                                  student, out, value if kind != "layers" else None)
        computed = True
    else:
        logits_path, computed = kd.teacher_logits(teacher_dir, model=model, tokenizer=tokenizer,
                                                  **logits)
    if kind != "layers":
        return value, logits_path, computed
    if not (init / "config.json").is_file():
        kd.build_layer_student(teacher_dir, value, init)
    return str(init.resolve()), logits_path, computed


def word_logits(teacher_dir: Path, model, tokenizer, raw, student_view, student: RunConfig,
                out: Path, student_model: str | None) -> Path:
    """The teacher's per-word logits on the training sentences (read as it was trained),
    placed on the windows the student trains on (``tokens.on_windows``: its tokenizer, the
    teacher's for a ``layers:N`` student, its max_length and stride), in ``out``."""
    import torch  # torch loads only when this runs

    from pretune.data import tokens
    from pretune.models.io import read_meta
    from pretune.models.load import load_tokenizer
    from pretune.training import ensemble as ens, objectives
    from pretune.training.distill import write_logits
    from pretune.training.inputs import token_windows
    from pretune.training.predict import model_outputs

    settings = RunConfig.from_dict(read_meta(teacher_dir).get("settings") or {})
    objective = objectives.for_task(raw, settings.train)
    outputs, _ = model_outputs(model, tokenizer, settings, raw, split="train",
                               objective=objective)
    if student_model is not None:
        tokenizer = load_tokenizer(student_model, is_local=Path(student_model).is_dir())
    windows = token_windows(student, student_view, tokenizer, "train", training=True)
    path = Path(out) / WORD_LOGITS_FILE
    write_logits(path, torch.as_tensor(tokens.on_windows(windows, ens.as_logits(objective,
                                                                                outputs))),
                 student_view, teacher=str(teacher_dir), sentences=len(student_view.train.labels))
    log.info("teacher logits on the words of %d training sentences: %s",
             len(student_view.train.labels), path)
    return path


def report_metrics(kind: str, metric: str) -> list[str]:
    """The metrics the comparison reports for a task of ``kind`` whose run optimized ``metric``."""
    return list(dict.fromkeys((*REPORT_METRICS.get(kind, ()), metric)))


def compare(teacher_dir: Path, student_dir: Path, task, metric: str, *, batch_size: int = 128,
            threads: int | None = None) -> dict[str, Any]:
    """Teacher and student side by side on the validation split of ``task`` (as read, before
    preprocessing), in this process: parameters, size on disk, the validation metrics of
    ``report_metrics``, and examples per second of prediction (same batches, batch size and
    threads). Each model reads the texts preprocessed as its own pretune.yaml says."""
    from pretune.models.io import load_model_dir  # torch loads only when this runs
    from pretune.training import distill as kd
    from pretune.training.device import set_threads

    set_threads(threads)
    names = report_metrics(task.kind, metric)
    rows: dict[str, dict[str, Any]] = {}
    models: dict[str, tuple[Any, Any]] = {}
    inputs: dict[str, tuple[Any, Any]] = {}
    lengths: dict[str, int] = {}
    for name, directory in (("teacher", teacher_dir), ("student", student_dir)):
        model, tokenizer, meta = load_model_dir(directory)
        settings = RunConfig.from_dict(meta.get("settings") or {})
        valid, scores = score(model, tokenizer, meta, settings, task, metric, batch_size)
        rows[name] = {"path": str(Path(directory).resolve()), **kd.size_of(model, directory),
                      "layers": _layers(model),
                      **{m: round(float(scores[m]), 6) for m in names}}
        models[name], inputs[name] = (model, tokenizer), (valid.texts, valid.pairs)
        lengths[name] = settings.data.max_length or 128
    speeds = kd.throughput(models, task.valid.texts, task.valid.pairs, max(lengths.values()),
                           batch_size=batch_size, inputs=inputs)
    for name in rows:
        rows[name]["examples_per_s"] = speeds[name]
    t, s = rows["teacher"], rows["student"]
    ratios = {
        "parameters": kd.ratio(s["parameters"], t["parameters"]),
        "size_mb": kd.ratio(s["size_mb"], t["size_mb"]),
        "speedup": kd.ratio(s["examples_per_s"], t["examples_per_s"]),
        **{f"{m}_difference": round(s[m] - t[m], 6) for m in names},
    }
    return {"metric": metric, "metrics": names, "valid_rows": len(task.valid.labels),
            "batch_size": batch_size, "threads": _threads(), "teacher": t, "student": s,
            "ratios": ratios}


def score(model, tokenizer, meta: Mapping[str, Any], settings: RunConfig, task, metric: str,
          batch_size: int):
    """The validation split as ``model`` reads it (its preprocessing) and every validation
    metric of the model on it: ``(split, metrics)``."""
    from pretune.data.collate import Batches  # torch loads only when this runs
    from pretune.training.loop import evaluate_model
    from pretune.training.run import _objective_of

    valid = text_prep.apply_to_task(task, settings.data).valid
    if task.kind == "token":  # per word, on whole sentences, as the search scored it
        from pretune.training import ensemble as ens, objectives
        from pretune.training.predict import model_outputs

        objective = objectives.for_task(task, settings.train)  # with the tag names
        outputs, labels = model_outputs(model, tokenizer, settings, task, objective=objective)
        return valid, ens.score(objective, outputs, labels, replace(settings.train,
                                                                     metric=metric))
    objective = _objective_of(task.kind, meta.get("task") or {})
    enc = encode(valid.texts, valid.pairs, valid.labels, tokenizer,
                 settings.data.max_length or 128)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = Batches(enc, batch_size, pad_id=pad_id, shuffle=False)
    scores = evaluate_model(model, batches, objective=objective,
                            settings=replace(settings.train, metric=metric))
    return valid, scores


def _layers(model) -> int | None:
    return getattr(getattr(model, "config", None), "num_hidden_layers", None)


def _threads() -> int:
    import torch  # torch loads only when this runs

    return int(torch.get_num_threads())


def read_report(out: str | Path) -> dict[str, Any] | None:
    """``distill.yaml`` of a student's run directory, or None when it has none."""
    path = Path(out) / REPORT_FILE
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else None


__all__ = ["distill", "DistillResult", "compare", "read_report", "teacher_run", "student_base",
           "report_metrics", "DISTILL_SPACE", "REPORT_METRICS"]
