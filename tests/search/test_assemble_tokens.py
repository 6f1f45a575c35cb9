"""The final assembly of a token-classification search: kept trials' per-word outputs, soups,
the ensemble scored by entity F1 on averaged probabilities, its distillation, best/ and
``pretune predict --ensemble``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import pretune
from pretune.config import TrainConfig
from pretune.data import tokens
from pretune.training import ensemble
from pretune.training.distill import soft_loss
from pretune.training.metrics import entity_report
from pretune.training.objectives import TokenClassification
from tests.ner_helpers import sentences, write_conll, write_jsonl
from tests.test_ner_end_to_end import transformers_tags

from .helpers import cli, space_file

NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
SETTINGS = TrainConfig(metric="entity_f1")
KEEP = 3


def _one_hot(tags: list[list[str]], width: int, sure: float = 0.9) -> np.ndarray:
    """Per-word probabilities putting ``sure`` on each word's tag, the rest spread evenly."""
    out = np.zeros((len(tags), width, len(NAMES)), dtype=np.float32)
    for row, sentence in enumerate(tags):
        for word, tag in enumerate(sentence):
            out[row, word] = (1 - sure) / (len(NAMES) - 1)
            out[row, word, NAMES.index(tag)] = sure
    return out


def _labels(tags: list[list[str]], width: int) -> np.ndarray:
    out = np.full((len(tags), width), -100, dtype=np.int64)
    for row, sentence in enumerate(tags):
        out[row, :len(sentence)] = [NAMES.index(t) for t in sentence]
    return out


# --- scoring averaged per-word probabilities -------------------------------------------------


TRUE = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-LOC", "I-LOC"]]


def test_the_ensembles_entity_f1_is_that_of_its_averaged_probabilities():
    # Model a misses the LOC of sentence 1 (O at 0.6), model b the PER of sentence 0, each
    # less surely than the other is right: alone each finds 2 of 3 entities; their average
    # finds all three.
    a = _one_hot(TRUE, 4)
    a[0, 3] = [0.6, 0.0, 0.0, 0.4, 0.0]
    b = _one_hot(TRUE, 4)
    b[0, 0] = [0.6, 0.4, 0.0, 0.0, 0.0]
    labels = _labels(TRUE, 4)
    objective = TokenClassification(NAMES, "IOB2")
    alone = [ensemble.score(objective, o, labels, SETTINGS)["entity_f1"] for o in (a, b)]
    assert alone[0] == pytest.approx(0.8) and alone[1] < 1.0  # 2 of 3 found: P 1, R 2/3
    both = ensemble.score(objective, ensemble.average([a, b], [1, 1]), labels, SETTINGS)
    assert both["entity_f1"] == pytest.approx(1.0)
    # the loss is the mean cross-entropy of the averaged probabilities over the real words
    mean = (a + b) / 2
    words = labels != -100
    expected = -np.log(mean[words, labels[words]]).mean()
    assert both["loss"] == pytest.approx(expected, rel=1e-4)
    picked = ensemble.select([a, b], labels, objective, SETTINGS, rounds=3)
    assert all(picked.weights) and picked.metrics["entity_f1"] == pytest.approx(1.0)


def test_as_logits_normalizes_each_words_tags():
    probs = np.array([[[0.2, 0.2, 0.2, 0.2, 0.2], [0.5, 0.5, 0.0, 0.0, 0.0]]])
    logits = ensemble.as_logits(TokenClassification(NAMES), probs)
    assert logits.shape == probs.shape
    assert np.allclose(np.exp(logits).sum(axis=-1), 1.0)


# --- per-word outputs and the teacher's windows ----------------------------------------------


def test_sentence_outputs_read_each_word_once_and_a_tokenless_word_as_O():
    # sentence 0 in two windows that share word 1 (read in the first, on a tie), sentence 1
    # whose word 1 has no token
    input_ids = [[101, 5, 6, 102], [101, 6, 7, 102], [101, 8, 102]]
    word_ids = [[None, 0, 1, None], [None, 1, 2, None], [None, 0, None]]
    windows = tokens.windows_of(input_ids, [0, 0, 1], word_ids)
    probs = np.zeros((3, 4, 2), dtype=np.float32)
    probs[0, 1] = [0.1, 0.9]
    probs[0, 2] = [0.3, 0.7]
    probs[1, 1] = [0.5, 0.5]  # word 1 again: not read here
    probs[1, 2] = [0.8, 0.2]
    probs[2, 1] = [0.6, 0.4]
    tags = [np.array([1, 1, 0]), np.array([0, 1])]
    outputs, labels = tokens.sentence_outputs(windows, probs, tags, outside=0)
    assert outputs.shape == (2, 3, 2) and labels.tolist() == [[1, 1, 0], [0, 1, -100]]
    assert np.allclose(outputs[0], [[0.1, 0.9], [0.3, 0.7], [0.8, 0.2]])
    assert np.allclose(outputs[1, :2], [[0.6, 0.4], [1.0, 0.0]])  # no token: read as O
    placed = tokens.on_windows(windows, outputs)
    assert placed.shape == (3, 4, 2)
    assert np.allclose(placed[0, 2], [0.3, 0.7]) and np.allclose(placed[1, 2], [0.8, 0.2])
    assert np.isnan(placed[1, 1]).all()  # the window that does not read word 1 teaches nothing
    assert np.isnan(placed[:, 0]).all() and np.isnan(placed[:2, 3]).all()  # special tokens


def test_the_token_distillation_term_reads_only_taught_tokens():
    teacher = torch.full((2, 5, 3), float("nan"))
    teacher[0, 1] = torch.tensor([2.0, 0.0, -1.0])
    teacher[1, 2] = torch.tensor([-1.0, 3.0, 0.0])
    student = torch.randn(2, 4, 3)  # the batch is narrower than the widest window
    student[0, 1], student[1, 2] = teacher[0, 1], teacher[1, 2]
    assert float(soft_loss("token", student, teacher, 2.0)) == pytest.approx(0.0, abs=1e-6)
    student[1, 2] = torch.tensor([3.0, -1.0, 0.0])
    assert float(soft_loss("token", student, teacher, 2.0)) > 0.1


def test_a_token_teachers_file_is_checked_against_the_sentences(tmp_path):
    from types import SimpleNamespace

    from pretune.data.task import Split
    from pretune.training.distill import Distillation, distillation, write_logits

    labels = np.empty(2, dtype=object)
    labels[:] = [np.array([1, 2]), np.array([0])]
    task = SimpleNamespace(train=Split(["john smith", "hi"], None, labels, words=None),
                           label_names=NAMES)
    logits = torch.zeros(3, 4, len(NAMES))  # three windows of the two sentences
    path = tmp_path / "t.safetensors"
    write_logits(path, logits, task, teacher="ensemble", sentences=2)
    objective = TokenClassification(NAMES)
    settings = TrainConfig(distill_logits=str(path))
    assert isinstance(distillation(objective, task, settings), Distillation)
    write_logits(path, logits, task, teacher="ensemble", sentences=3)
    with pytest.raises(Exception, match="training split"):
        distillation(objective, task, settings)


# --- a search ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_run(tiny_learner_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("token-assembly")
    train = write_conll(root / "train.conll", sentences(48, 0))
    valid = write_jsonl(root / "valid.jsonl", sentences(16, 1))
    test = write_jsonl(root / "test.jsonl", sentences(12, 2))
    # trials that differ by their learning rate and seed only: one soup group
    space = space_file(root / "space.yaml", {"extend": False,
                                              "lr": {"low": 2e-3, "high": 4e-3, "log": True}})
    out = root / "run"
    result = cli("tune", "--model", tiny_learner_dir, "--train", train, "--valid", valid,
                 "--out", out, "--space", space, "--budget", "4trials", "--keep", KEEP,
                 "--fixed", "epochs=10", "--fixed", "patience=100", "--fixed", "batch_size=8",
                 "--fixed", "threads=1",
                 "--fixed", "warmup_ratio=0", "--precision", "fp32", "--pruner", "none",
                 "--no-lr-range-test", "--no-priors", "--no-report", "--no-refit")
    assert result.exit_code == 0, result.output
    return out, valid, test, result.output


def test_a_token_search_builds_the_assembly_and_records_every_candidate(token_run):
    out, _, _, output = token_run
    plan = yaml.safe_load((out / "plan.yaml").read_text())
    assembly = plan["assembly"]
    assert "skipped" not in assembly and plan["plan"]["keep"] == KEEP
    kinds = [c["kind"] for c in assembly["candidates"]]
    assert kinds[:2] == ["trial", "ensemble"]
    ensemble_members = assembly["candidates"][1]["members"]
    assert ("distilled" in kinds) == (len(ensemble_members) > 1)  # an ensemble of one: no student
    assert all(isinstance(c["entity_f1"], float) for c in assembly["candidates"])
    assert "final assembly, by validation entity_f1" in output
    kept = sorted((out / "kept").iterdir())
    assert len(kept) == KEEP
    with np.load(kept[0] / "valid-outputs.npz") as f:  # per word of the 16 sentences
        assert f["outputs"].shape[:2] == f["labels"].shape and f["labels"].shape[0] == 16
        assert f["outputs"].shape[2] == len(yaml.safe_load(
            (kept[0] / "pretune.yaml").read_text())["labels"])
    spec = yaml.safe_load((out / "ensemble.yaml").read_text())
    assert spec["task"] == "token" and spec["metric"] == "entity_f1"


def test_the_ensembles_score_is_entity_f1_of_the_averaged_kept_outputs(token_run):
    out, _, _, _ = token_run
    spec = yaml.safe_load((out / "ensemble.yaml").read_text())
    outputs, weights = [], []
    for member in spec["members"]:
        with np.load(out / member["path"] / "valid-outputs.npz") as f:
            outputs.append(f["outputs"])
            labels = f["labels"]
        weights.append(member["weight"])
    names = yaml.safe_load((out / "best" / "pretune.yaml").read_text())["labels"]
    mean = sum(w * o for w, o in zip(weights, outputs)) / sum(weights)
    keep = labels != -100
    true = [[names[t] for t in row[k]] for row, k in zip(labels, keep)]
    pred = [[names[t] for t in row[k]] for row, k in zip(mean.argmax(-1), keep)]
    expected = entity_report(true, pred).get("micro avg", {}).get("f1-score", 0.0)
    assert spec["metrics"]["entity_f1"] == pytest.approx(expected)
    ensemble_row = yaml.safe_load((out / "plan.yaml").read_text())["assembly"]["candidates"][1]
    assert ensemble_row["entity_f1"] == pytest.approx(expected)


def test_best_loads_with_transformers_and_tags_as_predict_does(token_run, tmp_path):
    from transformers import AutoModelForTokenClassification

    out, _, test, _ = token_run
    plan = yaml.safe_load((out / "plan.yaml").read_text())["assembly"]
    meta = yaml.safe_load((out / "best" / "pretune.yaml").read_text())
    assert meta["made_of"]["kind"] == plan["chosen"]
    best_score = max(c["entity_f1"] for c in plan["candidates"] if c["kind"] != "ensemble")
    assert meta["metrics"]["entity_f1"] == pytest.approx(best_score)
    model = AutoModelForTokenClassification.from_pretrained(out / "best")
    assert model.config.num_labels == len(meta["labels"])
    frame = pretune.predict(out, str(test))
    words = [list(w) for w in pd.read_json(test, lines=True)["tokens"]]
    assert [list(p) for p in frame["prediction"]] == transformers_tags(out / "best", words)


def test_predict_ensemble_averages_the_members_word_probabilities(token_run):
    from pretune.models.io import load_model_dir
    from pretune.training.predict import word_probabilities

    out, _, test, _ = token_run
    frame = pretune.predict(out, str(test), ensemble=True, entities=True)
    spec = yaml.safe_load((out / "ensemble.yaml").read_text())
    total, names = 0, None
    for member in spec["members"]:
        model, tokenizer, meta = load_model_dir(out / member["path"])
        per_word, names, _, _, _ = word_probabilities(model, tokenizer, meta["settings"],
                                                      str(test))
        total = total + member["weight"] * np.concatenate(per_word)
    expected = [names[i] for i in total.argmax(axis=1)]
    assert sum(frame["prediction"], []) == expected
    assert len(frame) == 12 and "entities" in frame.columns


def test_trials_keep_their_checkpoint_soup(token_run):
    out, _, _, _ = token_run
    soups = [yaml.safe_load((p / "pretune.yaml").read_text())["training"]["soup"]
             for p in (out / "kept").iterdir()]
    assert any(s and len(s) > 1 for s in soups)  # the best evaluations of a trial, averaged


def test_a_soup_of_token_models_is_scored_by_entity_f1_on_its_words(token_run, tmp_path,
                                                                     monkeypatch):
    from safetensors.torch import load_file

    from pretune.data.task import load_task
    from pretune.search import assemble
    from pretune.training import soup
    from pretune.training.caches import RunCaches
    from pretune.training.run import data_seed

    out, _, _, _ = token_run
    kept = assemble.kept_models(out, "entity_f1", "maximize")[:2]
    config = kept[0].config
    task = load_task(config.data, data_seed(config))
    monkeypatch.setattr(soup, "is_better", lambda *a, **k: False)  # every model joins
    made = assemble._soup(tmp_path, kept, task, RunCaches.for_one_run(), "entity_f1",
                          assemble._Clock(None))
    assert made.kind == "soup" and made.members == [k.trial for k in kept]
    state = load_file(str(made.path / "model.safetensors"))
    parts = [load_file(str(k.path / "model.safetensors")) for k in kept]
    name = "classifier.weight"
    assert torch.allclose(state[name], (parts[0][name] + parts[1][name]) / 2, atol=1e-6)
    model, tokenizer, _ = assemble._load(made.path)
    from pretune.training.run import model_outputs

    outputs, labels = model_outputs(model, tokenizer, config, task)
    names = task.label_names
    keep = labels != -100
    true = [[names[t] for t in row[k]] for row, k in zip(labels, keep)]
    pred = [[names[t] for t in row[k]] for row, k in zip(outputs.argmax(-1), keep)]
    expected = entity_report(true, pred, task.scheme).get("micro avg", {}).get("f1-score", 0.0)
    assert made.metrics["entity_f1"] == pytest.approx(expected)


def test_pretune_distill_teaches_a_token_student_each_words_tags(token_run, tmp_path):
    from transformers import AutoModelForTokenClassification

    from pretune.search.distill import WORD_LOGITS_FILE
    from pretune.training.distill import read_logits

    run, valid, _, _ = token_run
    out = tmp_path / "student"
    done = cli("distill", run, "--student", "layers:1", "--out", out, "--budget", "2trials",
               "--fixed", "epochs=2", "--fixed", "threads=1", "--fixed", "batch_size=8",
               "--no-lr-range-test", "--no-priors", "--no-report")
    assert done.exit_code == 0, done.output
    student = AutoModelForTokenClassification.from_pretrained(out / "best")
    assert student.config.num_hidden_layers == 1
    # one row per training window, NaN where no word's tags are taught (later sub-tokens, pads)
    logits, meta = read_logits(out / WORD_LOGITS_FILE)
    tags = yaml.safe_load((run / "best" / "pretune.yaml").read_text())["labels"]
    assert int(meta["sentences"]) == 48 and logits.shape[-1] == len(tags)
    taught = ~torch.isnan(logits[..., 0])
    assert 0 < int(taught.sum()) < taught.numel()
    assert torch.allclose(logits[taught].softmax(-1).sum(-1), torch.ones(int(taught.sum())))
    report = yaml.safe_load((out / "distill.yaml").read_text())
    assert report["metrics"] == ["entity_f1"]
    best = yaml.safe_load((out / "best" / "pretune.yaml").read_text())
    assert report["student"]["entity_f1"] == pytest.approx(best["metrics"]["entity_f1"], abs=1e-6)
    truth = [r["tags"] for r in pd.read_json(valid, lines=True).to_dict("records")]
    predicted = pretune.predict(out, valid)["prediction"]
    assert [len(p) for p in predicted] == [len(t) for t in truth]


def test_pretune_distill_teaches_a_named_token_student_on_its_own_windows(token_run, tmp_path,
                                                                        tiny_learner_dir):
    from pretune.search.distill import WORD_LOGITS_FILE
    from pretune.training.distill import read_logits

    run, valid, _, _ = token_run
    out = tmp_path / "named"
    done = cli("distill", run, "--student", tiny_learner_dir, "--out", out, "--budget",
               "1trials", "--fixed", "epochs=1", "--fixed", "threads=1", "--fixed",
               "batch_size=8", "--fixed", "max_length=8", "--no-lr-range-test", "--no-priors",
               "--no-report")
    assert done.exit_code == 0, done.output
    # the pinned max_length of 8 splits the longer sentences: more windows than sentences,
    # each taught, as the student trains on them
    logits, meta = read_logits(out / WORD_LOGITS_FILE)
    assert int(meta["sentences"]) == 48 and logits.shape[0] > 48 and logits.shape[1] <= 8
    assert bool((~torch.isnan(logits[..., 0])).any(dim=1).all())
    assert len(pretune.predict(out, valid)) == len(pd.read_json(valid, lines=True))


def _letters_model_dir(path) -> str:
    """A tiny BERT whose tokenizer knows single letters only: every word of several letters is
    several sub-tokens, none of them where the teacher's MiniLM tokenizer puts them."""
    from transformers import BertConfig, BertForTokenClassification, BertTokenizerFast

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *letters,
             *(f"##{c}" for c in letters)]
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                        initializer_range=0.2)
    BertForTokenClassification(config).save_pretrained(path)
    return str(path)


def test_pretune_distill_teaches_a_student_with_another_tokenizer_at_its_first_sub_tokens(
        token_run, tmp_path):
    from transformers import AutoTokenizer

    from pretune.search.distill import WORD_LOGITS_FILE
    from pretune.training.distill import read_logits

    run, valid, _, _ = token_run
    student_dir = _letters_model_dir(tmp_path / "letters")
    out = tmp_path / "letters-student"
    done = cli("distill", run, "--student", student_dir, "--out", out, "--budget", "1trials",
               "--fixed", "epochs=1", "--fixed", "threads=1", "--fixed", "batch_size=8",
               "--no-lr-range-test", "--no-priors", "--no-report")
    assert done.exit_code == 0, done.output
    logits, meta = read_logits(out / WORD_LOGITS_FILE)
    assert int(meta["sentences"]) == 48 and logits.shape[0] == 48  # 128 positions hold each
    # The teacher's tags sit at the first letter of each word in the student's tokens: one
    # taught position per word, each a sub-token the student's tokenizer starts a word with.
    letters = AutoTokenizer.from_pretrained(student_dir)
    for row, sentence in enumerate(sentences(48, 0)):  # the training file of token_run
        encoded = letters(sentence["tokens"], is_split_into_words=True)
        firsts = {encoded.word_to_tokens(w).start for w in range(len(sentence["tokens"]))}
        taught = set(torch.nonzero(~torch.isnan(logits[row, :, 0])).flatten().tolist())
        assert taught == firsts, row
    assert len(pretune.predict(out, valid)) == len(pd.read_json(valid, lines=True))
