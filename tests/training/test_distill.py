"""The distillation loss, the teacher-logit cache and the layers:N student."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from pretune.config import TrainConfig
from pretune.errors import ConfigError, DataError
from pretune.training import distill as kd
from pretune.training.objectives import Classification, MultiLabel, Regression


def settings(**kw) -> TrainConfig:
    return replace(TrainConfig(), **kw)


def batch(seed=0, n=6, k=3):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(n, k, generator=g)
    teacher = torch.randn(n, k, generator=g) * 3
    labels = torch.randint(0, k, (n,), generator=g)
    return student, teacher, labels


# --- the loss ------------------------------------------------------------------------------------


def test_alpha_zero_is_the_task_loss_alone():
    student, teacher, labels = batch()
    objective = kd.Distillation(Classification(), teacher)
    loss = objective.loss_fn(settings(distill_alpha=0.0, distill_temperature=4.0), "cpu")
    index = torch.arange(len(labels))
    assert float(loss(student, labels, index)) == pytest.approx(float(F.cross_entropy(student, labels)))


def test_the_loss_mixes_kl_at_temperature_scaled_by_t_squared_with_the_task_loss():
    student, teacher, labels = batch()
    t, alpha = 3.0, 0.3
    objective = kd.Distillation(Classification(), teacher)
    loss = objective.loss_fn(settings(distill_alpha=alpha, distill_temperature=t), "cpu")
    # By hand: KL(p_teacher || p_student) at T, summed over classes, averaged over examples.
    p = torch.softmax(teacher / t, dim=-1)
    kl = (p * (p.log() - torch.log_softmax(student / t, dim=-1))).sum(dim=1).mean()
    expected = alpha * t * t * kl + (1 - alpha) * F.cross_entropy(student, labels)
    assert float(loss(student, labels, torch.arange(6))) == pytest.approx(float(expected), rel=1e-5)
    # T^2: the soft term's value is T^2 times the plain KL at that temperature.
    soft = kd.soft_loss("classification", student, teacher, t)
    assert float(soft) == pytest.approx(t * t * float(kl), rel=1e-5)


def test_the_soft_term_is_zero_when_the_student_matches_the_teacher():
    _, teacher, _ = batch()
    for kind in ("classification", "multilabel", "regression"):
        out = teacher[:, :1] if kind == "regression" else teacher
        assert float(kd.soft_loss(kind, out.clone(), out, 2.0)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kind", ["classification", "multilabel", "regression"])
def test_with_alpha_one_gradient_steps_pull_the_student_to_the_teacher(kind):
    student, teacher, labels = batch(1)
    if kind == "regression":
        student, teacher, labels = student[:, :1], teacher[:, :1], labels.float()
        task = Regression()
    elif kind == "multilabel":
        task, labels = MultiLabel(), (labels[:, None] == torch.arange(3)).long()
    else:
        task = Classification()
    # The labels disagree with the teacher on purpose: with alpha=1 only the teacher counts.
    loss = kd.Distillation(task, teacher).loss_fn(
        settings(distill_alpha=1.0, distill_temperature=2.0), "cpu")
    x = student.clone().requires_grad_(True)
    gap = lambda z: float(kd.soft_loss(kind, z, teacher, 2.0))  # noqa: E731
    before = gap(x.detach())
    for _ in range(200):
        x.grad = None
        loss(x, labels, torch.arange(len(labels))).backward()
        with torch.no_grad():
            x -= 2.0 * x.grad
    assert gap(x.detach()) < before * 0.5
    if kind == "classification":  # the student's classes now rank as the teacher's do
        assert torch.equal(x.argmax(dim=1), teacher.argmax(dim=1))


def test_the_teacher_logits_are_looked_up_by_the_batch_index():
    student, teacher, labels = batch(2)
    loss = kd.Distillation(Classification(), teacher).loss_fn(
        settings(distill_alpha=1.0, distill_temperature=1.0), "cpu")
    rows = torch.tensor([4, 0, 2])
    got = float(loss(student[:3], labels[:3], rows))
    assert got == pytest.approx(float(kd.soft_loss("classification", student[:3], teacher[rows], 1.0)))
    assert got != pytest.approx(float(kd.soft_loss("classification", student[:3], teacher[:3], 1.0)))


def test_a_row_past_the_teachers_file_is_a_data_error_naming_the_fix():
    student, teacher, labels = batch(2)  # the file holds the teacher's rows 0 to 7
    loss = kd.Distillation(Classification(), teacher[:2]).loss_fn(
        settings(distill_alpha=0.5, distill_temperature=1.0), "cpu")
    with pytest.raises(DataError, match="Run pretune distill again"):
        loss(student[:3], labels[:3], torch.tensor([0, 1, 2]))


def test_the_training_loop_gives_the_objective_each_batch_index(tiny_model_dir, sentiment_csv):
    """A real run with distill_logits: the loop passes each batch's rows to the loss, every
    training row once an epoch; logits of other data, or no file, are refused."""
    from safetensors.torch import save_file

    from pretune.config import RunConfig
    from pretune.data.task import load_task
    from pretune.training.run import data_seed, fit

    config = RunConfig().with_settings(dict(
        model=tiny_model_dir, train=str(sentiment_csv), epochs=1, batch_size=8, precision="fp32",
        threads=1, max_length=16, distill_alpha=1.0, distill_temperature=2.0, lr=1e-3))
    task = load_task(config.data, data_seed(config))
    logits = F.one_hot(torch.as_tensor(task.train.labels), 2).float() * 4
    path = sentiment_csv.parent / "logits.safetensors"
    save_file({"logits": logits}, str(path), metadata={"train_digest": kd.train_digest(task)})
    seen = []
    original = kd.Distillation.loss_fn

    def spy(self, s, device):
        fn = original(self, s, device)

        def wrapped(logits, labels, index):
            seen.append(index.clone())
            return fn(logits, labels, index)
        return wrapped

    kd.Distillation.loss_fn = spy
    try:
        result = fit(config.with_settings({"distill_logits": str(path)}), None, task=task)
    finally:
        kd.Distillation.loss_fn = original
    assert result.metrics
    rows = torch.cat(seen)
    assert sorted(rows.tolist()) == list(range(len(task.train.labels)))  # one epoch, every row
    # Logits of other data are refused with a clear error.
    save_file({"logits": logits[:5]}, str(path), metadata={"train_digest": "other"})
    with pytest.raises(DataError, match="distill_logits must hold the teacher's logits"):
        fit(config.with_settings({"distill_logits": str(path)}), None, task=task)
    with pytest.raises(ConfigError, match="distill_logits must name a file"):
        fit(config.with_settings({"distill_logits": str(path) + ".missing"}), None, task=task)


# --- the teacher's logits, computed once ------------------------------------------------------------


def test_teacher_logits_are_computed_once_and_keyed_by_teacher_and_data(tiny_model_dir,
                                                                        sentiment_csv, tmp_path,
                                                                        monkeypatch):
    from pretune.config import DataConfig
    from pretune.data.task import load_task
    from pretune.models.io import load_model_dir

    task = load_task(DataConfig(train=str(sentiment_csv)), 0)
    path, computed = kd.teacher_logits(tiny_model_dir, task, 16, tmp_path)
    assert computed and path.parent == tmp_path
    logits, meta = kd.read_logits(path)
    assert logits.shape == (len(task.train.labels), 2)
    assert meta["train_digest"] == kd.train_digest(task)
    # Row i is the teacher's output on training text i (the batches were sorted by length).
    model, tokenizer, _ = load_model_dir(tiny_model_dir)
    with torch.no_grad():
        for i in (0, 3, len(task.train.texts) - 1):
            enc = tokenizer(task.train.texts[i], truncation=True, max_length=16, return_tensors="pt")
            assert torch.allclose(model(**enc).logits[0], logits[i], atol=1e-4)

    # Found the second time: the teacher is not run again.
    def no_run(*a, **k):
        raise AssertionError("the teacher ran again")

    monkeypatch.setattr(kd, "predict_logits", no_run)
    assert kd.teacher_logits(tiny_model_dir, task, 16, tmp_path) == (path, False)
    # Other data or another max_length is another key.
    other = load_task(DataConfig(train=str(sentiment_csv), valid_fraction=0.25), 0)
    assert kd.logits_key(tiny_model_dir, other, 16) != kd.logits_key(tiny_model_dir, task, 16)
    assert kd.logits_key(tiny_model_dir, task, 32) != kd.logits_key(tiny_model_dir, task, 16)


def test_the_teacher_reads_its_own_texts_and_the_file_names_the_students(tiny_model_dir,
                                                                        sentiment_csv, tmp_path):
    """With ``inputs`` (the same rows preprocessed as the teacher was trained), the logits are
    the teacher's on those texts, labelled with the student's rows, which training accepts."""
    from pretune.config import DataConfig, RunConfig
    from pretune.data.task import load_task
    from pretune.data.text_prep import apply_to_task
    from pretune.models.io import load_model_dir
    from pretune.training.objectives import for_task

    raw = load_task(DataConfig(train=str(sentiment_csv)), 0)
    teacher_view = apply_to_task(raw, DataConfig(lowercase=True, stem="porter"))
    assert teacher_view.train.texts != raw.train.texts
    path, computed = kd.teacher_logits(tiny_model_dir, raw, 16, tmp_path, inputs=teacher_view)
    assert computed
    logits, meta = kd.read_logits(path)
    assert meta["train_digest"] == kd.train_digest(raw)
    assert meta["teacher_digest"] == kd.train_digest(teacher_view)
    model, tokenizer, _ = load_model_dir(tiny_model_dir)
    expected = kd.predict_logits(model, tokenizer, teacher_view.train.texts, None, 16)
    assert torch.allclose(logits, expected, atol=1e-4)
    # The teacher's texts are part of the key: the raw-text logits are another file.
    assert kd.logits_key(tiny_model_dir, raw, 16, teacher_view) != kd.logits_key(
        tiny_model_dir, raw, 16)
    # The student training on the raw rows accepts the file; one on other texts refuses it.
    config = RunConfig().with_settings({"distill_logits": str(path)})
    objective = for_task(raw, config.train)
    assert isinstance(kd.distillation(objective, raw, config.train), kd.Distillation)
    with pytest.raises(DataError, match="computed on other rows"):
        kd.distillation(objective, teacher_view, config.train)


# --- the layers:N student --------------------------------------------------------------------------


def test_kept_layers_are_evenly_spaced_as_distilbert_kept_them():
    assert kd.kept_layers(12, 6) == [0, 2, 4, 6, 8, 10]
    assert kd.kept_layers(6, 3) == [0, 2, 4]
    assert kd.kept_layers(2, 1) == [0]


def test_a_layers_student_keeps_the_teachers_layers_and_loads_back(tmp_path):
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    from tests.conftest import build_tiny_model_dir

    teacher_dir = tmp_path / "teacher"
    build_tiny_model_dir(teacher_dir)
    # A 4-layer teacher, so that the kept layers are not simply the first ones.
    config = BertConfig.from_pretrained(teacher_dir)
    config.num_hidden_layers = 4
    torch.manual_seed(1)
    BertForSequenceClassification(config).save_pretrained(teacher_dir)
    teacher = BertForSequenceClassification.from_pretrained(teacher_dir).eval()

    out = kd.build_layer_student(teacher_dir, 2, tmp_path / "student")
    student = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert student.config.num_hidden_layers == 2 and len(student.bert.encoder.layer) == 2
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for new, old in enumerate([0, 2]):
        for name, value in s_state.items():
            if name.startswith(f"bert.encoder.layer.{new}."):
                source = name.replace(f"layer.{new}.", f"layer.{old}.", 1)
                assert torch.equal(value, t_state[source]), name
    for name in ("bert.embeddings.word_embeddings.weight", "classifier.weight"):
        assert torch.equal(s_state[name], t_state[name])
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())
    ids = torch.tensor([[101, 2023, 2003, 102]])
    assert student(input_ids=ids).logits.shape == (1, 2)


def test_a_layers_student_needs_a_bert_like_encoder_and_fewer_layers(tiny_model_dir):
    from pretune.models.io import load_model_dir

    model, _, _ = load_model_dir(tiny_model_dir)
    with pytest.raises(ConfigError, match="fewer layers than the teacher's 2"):
        kd.layer_student(model, 2)
    with pytest.raises(ConfigError, match="BERT-like encoder"):
        kd.layer_student(torch.nn.Linear(2, 2), 1)


@pytest.mark.parametrize("spec", ["layers:x", "layers:0", "layers:", "blocks:3", ""])
def test_bad_student_specs_are_config_errors(spec):
    with pytest.raises(ConfigError, match="--student"):
        kd.parse_student(spec)


def test_student_specs():
    assert kd.parse_student("layers:3") == ("layers", 3)
    assert kd.parse_student("prajjwal1/bert-tiny") == ("model", "prajjwal1/bert-tiny")


def test_size_counts_parameters_and_the_weights_on_disk(tiny_model_dir):
    from pretune.models.io import load_model_dir

    model, _, _ = load_model_dir(tiny_model_dir)
    size = kd.size_of(model, tiny_model_dir)
    assert size["parameters"] == sum(p.numel() for p in model.parameters())
    on_disk = sum(f.stat().st_size for f in Path(tiny_model_dir).glob("*.safetensors"))
    assert size["size_mb"] == pytest.approx(on_disk / 1e6, abs=1e-3)
    assert np.isclose(kd.ratio(1.0, 4.0), 0.25) and kd.ratio(1.0, 0.0) is None
