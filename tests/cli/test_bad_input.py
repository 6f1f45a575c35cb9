"""Bad input, whole: every kind of input a user can get wrong, through the real commands.

Each row runs one command with one bad input and checks what a user relies on: exit code 2,
one line of message with no traceback and no Python exception names, a message that names the
rule, the value given and the fix, and the run directory left as it was (an existing search's
files unchanged, byte for byte; a new --out not created).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest
import yaml

from tests.conftest import SENTIMENT_ROWS, build_tiny_model_dir

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PRETUNE_DEBUG": ""}

# What must never reach a user: a traceback, or the name of a Python exception class.
LEAKS = re.compile(r"Traceback|\b[A-Z][A-Za-z]*(Error|Exception)\b|File \"")


@dataclass
class Paths:
    """What the rows build their commands from."""

    tmp: Path
    model: str  # the tiny model
    train: Path
    valid: Path
    run: Path  # an existing search's run directory (must stay unchanged)
    new: Path  # a --out that does not exist (must still not exist)

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def folder(self, name: str) -> Path:
        (self.tmp / name).mkdir()
        return self.tmp / name

    def csv(self, name: str, rows, columns=("text", "label")) -> Path:
        path = self.tmp / name
        pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
        return path

    def tune(self, *extra, out: Path | None = None, train: Path | None = None) -> list:
        """A `pretune tune` that would run one quick trial but for ``extra``."""
        return ["tune", "--model", self.model, "--train", train or self.train, "--valid",
                self.valid, "--out", out or self.new, "--budget", "1trials",
                "--no-lr-range-test", "--precision", "fp32", "--fixed", "epochs=1", *extra]

    def resume(self, *extra, train: Path | None = None) -> list:
        """The command that started the search in ``run``, with ``extra`` added."""
        return ["tune", "--model", self.model, "--train", train or self.train, "--valid",
                self.valid, "--out", self.run, "--budget", "4trials", "--space",
                self.run.parent / "space.yaml", "--fixed", "epochs=2", "--metric", "loss",
                "--pruner", "none", "--precision", "fp32", "--fixed", "threads=1", *extra]

    def journal_copy(self) -> Path:
        """The study of ``run`` copied into a journal file, a storage a worker may join."""
        import optuna

        journal = self.tmp / "shared.journal"
        optuna.copy_study(from_study_name="pretune", from_storage=f"sqlite:///{self.run / 'study.db'}",
                          to_storage=optuna.storages.JournalStorage(
                              optuna.storages.journal.JournalFileBackend(str(journal))))
        return journal

    def tune_data(self, train: Path, *extra) -> list:
        return ["tune", "--model", self.model, "--train", train, "--out", self.new,
                "--budget", "1trials", "--no-lr-range-test", *extra]


@dataclass
class Row:
    args: Callable[[Paths], list]
    rule: str  # a fragment of the sentence that states the rule
    value: str  # the value given, as the message quotes it
    fix: str  # a fragment of the fix


def remote_code_model(tmp: Path) -> Path:
    """A model directory whose config.json needs the model's own Python code."""
    path = tmp / "remote-code-model"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({
        "model_type": "pretune-custom-test",
        "auto_map": {"AutoConfig": "configuration_custom.CustomConfig",
                     "AutoModelForSequenceClassification": "modeling_custom.CustomModel"},
    }))
    (path / "model.safetensors").write_bytes(b"\0" * 16)
    return path


def ner_rows(*rows) -> str:
    """JSON lines of (words, tags) sentences."""
    return "".join(json.dumps({"tokens": w, "tags": t}) + "\n" for w, t in rows)


def space(p: Paths, spec) -> Path:
    return p.file("space.yaml", spec if isinstance(spec, str) else yaml.safe_dump(spec))


ROWS: dict[str, Row] = {
    # -- data --
    "train file missing": Row(
        lambda p: p.tune(train=p.tmp / "nope.csv"),
        "must be an existing file", "nope.csv", "Check the path"),
    "unsupported extension": Row(
        lambda p: p.tune(train=p.file("data.xlsx", "text,label\n")),
        "must end in one of", ".xlsx", "Save it in one of those formats"),
    "empty file": Row(
        lambda p: p.tune(train=p.file("empty.csv", "")),
        "at least one row", "empty.csv", "Add rows"),
    "header only": Row(
        lambda p: p.tune(train=p.file("header.csv", "text,label\n")),
        "at least one row", "header.csv", "Add rows"),
    "repeated column name": Row(
        lambda p: p.tune(train=p.file("dup.csv", "text,text,label\n" + "a,b,pos\nc,d,neg\n" * 4)),
        "header must name each column once", "'text' 2 times", "Rename or remove the repeated"),
    "no text column": Row(
        lambda p: p.tune_data(p.csv("t.csv", [(1, 2, "pos"), (3, 4, "neg")] * 4,
                                    ("count", "stars", "label"))),
        "must have a text column", "count, stars, label", "Pass --text-column"),
    "no label column": Row(
        lambda p: p.tune_data(p.csv("t.csv", [("x", "pos"), ("y", "neg")] * 4, ("text", "stars"))),
        "must have a label column", "stars", "Pass --label-column"),
    "--valid columns differ": Row(
        lambda p: p.tune("--valid", p.csv("v.csv", SENTIMENT_ROWS, ("sentence", "label"))),
        "must have the same columns as --train", "sentence", "Rename the column"),
    "single class": Row(
        lambda p: p.tune_data(p.csv("one.csv", [("good film", "pos")] * 8)),
        "at least two classes", "'pos'", "examples of two or more classes"),
    # -- token classification (NER) --
    "token: tags and words differ": Row(
        lambda p: p.tune_data(p.file("ner.jsonl", ner_rows(
            (["EU", "rejects", "it"], ["B-ORG", "O", "O"]), (["Peter", "Blackburn"], ["B-PER"])))),
        "one tag per word", "row 2", "same length"),
    "token: unknown tag scheme": Row(
        lambda p: p.tune_data(p.file("ner.jsonl", ner_rows(
            (["Peter", "ran"], ["PERSON", "O"]), (["Paris", "won"], ["B-LOC", "O"])))),
        "must follow IOB1, IOB2 or BIOES", "'PERSON'", "Write the tags"),
    "token: empty sentence": Row(
        lambda p: p.tune_data(p.file("ner.jsonl", ner_rows(
            (["Peter", "ran"], ["B-PER", "O"]), ([], [])))),
        "a list of words in every row", "an empty sentence", "Remove that row"),
    "token: mixed with sentence labels": Row(
        lambda p: p.tune_data(p.file("ner.jsonl", "".join(
            json.dumps({"tokens": ["Peter", "ran"], "label": "pos"}) + "\n" for _ in range(4)))),
        "a list of tags beside each list of words", "'label'", "Give every row a tags list"),
    "garbage parquet": Row(
        lambda p: p.tune(train=p.file("data.parquet", b"this is not parquet at all\n" * 20)),
        "must be readable as PARQUET", "data.parquet", "save it again"),
    "--train-rows below 2": Row(
        lambda p: p.tune("--train-rows", "1"),
        "train_rows must be in [2", "got 1", "Pick a value in that range"),
    "--train-rows not a number": Row(
        lambda p: p.tune("--train-rows", "many"),
        "--train-rows", "'many'", "pretune tune --help"),
    "--unlabeled file missing": Row(
        lambda p: p.tune("--unlabeled", p.tmp / "more-texts.txt", "--fixed", "tapt_steps=5"),
        "--unlabeled must be a file of texts", "more-texts.txt", "Give a .txt file"),
    "--unlabeled file without texts": Row(
        lambda p: p.tune("--unlabeled", p.file("blank.txt", "\n  \n\n"), "--fixed", "tapt_steps=5"),
        "--unlabeled must hold at least one text", "blank.txt", "Give a file with one text"),
    # -- model --
    "model directory missing": Row(
        lambda p: ["tune", "--model", p.tmp / "no-model", "--train", p.train, "--out", p.new],
        "does not exist", "no-model", "Pass a Hugging Face model id or an existing"),
    "pickle-only checkpoint": Row(
        lambda p: ["tune", "--model", build_tiny_model_dir(p.tmp / "pickled", safetensors=False),
                   "--train", p.train, "--out", p.new],
        "can run code", "pytorch_model.bin", "--allow-pickle"),
    "remote code not trusted": Row(
        lambda p: ["tune", "--model", remote_code_model(p.tmp), "--train", p.train,
                   "--out", p.new],
        "own code", "remote-code-model", "--trust-remote-code"),
    # -- flags --
    "unknown --fixed name": Row(
        lambda p: p.tune("--fixed", "learning_rate=1e-3"),
        "which is not a setting", "'learning_rate'", "Use a setting name"),
    "--fixed without =": Row(
        lambda p: p.tune("--fixed", "lr"),
        "must be written key=value", "'lr'", "--fixed lr=3e-5"),
    "--fixed value of the wrong type": Row(
        lambda p: p.tune("--fixed", "lr=fast"),
        "lr must be a number", "'fast'", "such as 3e-5"),
    "--fixed lr out of range": Row(
        lambda p: p.tune("--fixed", "lr=50"),
        "lr must be in (0.0, 10.0]", "50", "Pick a value in that range"),
    "unknown metric": Row(
        lambda p: p.tune("--metric", "acuracy"),
        "metric must be one of", "'acuracy'", "Pick one of those names"),
    "unknown strategy": Row(
        lambda p: p.tune("--strategy", "bayes"),
        "strategy must be one of", "'bayes'", "Pick one of those names"),
    "unknown sampler": Row(
        lambda p: p.tune("--sampler", "cmaes"),
        "sampler must be one of", "'cmaes'", "Pick one of those names"),
    "unknown pruner": Row(
        lambda p: p.tune("--pruner", "never"),
        "pruner must be one of", "'never'", "Pick one of those names"),
    "unknown precision": Row(
        lambda p: p.tune("--precision", "fp8"),
        "precision must be one of", "'fp8'", "Pick one of those names"),
    "--seed not a number": Row(
        lambda p: p.tune("--seed", "abc"),
        "--seed", "'abc'", "pretune tune --help"),
    "unknown tracker": Row(
        lambda p: p.tune("--log-to", "wandb"),
        "--log-to must be one of", "'wandb'", "Pass --log-to mlflow"),
    "--workers 0": Row(lambda p: p.tune("--workers", "0"),
                       "workers must be in [1", "got 0", "Pick a value in that range"),
    "unknown executor": Row(lambda p: p.tune("--executor", "slurm"),
                            "executor must be one of", "'slurm'", "Pick one of those names"),
    "--heartbeat 0": Row(lambda p: p.tune("--heartbeat", "0"),
                         "heartbeat must be in [1", "got 0", "Pick a value in that range"),
    "several workers on one SQLite file": Row(
        lambda p: p.tune("--workers", "2", "--storage", f"sqlite:///{p.tmp}/study.db"),
        "Several workers need a storage that several processes may write", "study.db",
        "Pass a journal file"),
    "worker with an unknown storage": Row(
        lambda p: ["worker", "--storage", "nosuchdb://host/db", "--study", "s"],
        "must be an Optuna storage", "'nosuchdb://host/db'", "Give one of those"),
    "worker on the run's SQLite file": Row(
        lambda p: ["worker", "--storage", f"sqlite:///{p.run / 'study.db'}", "--study", "pretune"],
        "its storage must be a journal file or a database server", "study.db is SQLite",
        "Start the search with --storage RUN/study.journal"),
    "worker joining a study that is not there": Row(
        lambda p: ["worker", "--storage", p.tmp / "empty.journal", "--study", "nope"],
        "has no study 'nope'", "empty.journal", "pass the right --study"),
    "worker --out under a regular file": Row(
        lambda p: ["worker", "--storage", p.journal_copy(), "--study", "pretune",
                   "--out", p.file("plain.txt", "x") / "run"],
        "where a directory can be created", "plain.txt", "outside that file"),
    # -- YAML config --
    "--config missing": Row(
        lambda p: p.tune("--config", p.tmp / "nope.yaml"),
        "must name an existing YAML file", "nope.yaml", "Check the path"),
    "--config not YAML": Row(
        lambda p: p.tune("--config", p.file("bad.yaml", "lr: [1e-5\nepochs: {3\n")),
        "must be valid YAML", "bad.yaml", "Fix the file"),
    "--config not a mapping": Row(
        lambda p: p.tune("--config", p.file("list.yaml", "- lr\n- epochs\n")),
        "must hold a mapping", "list.yaml", "lines"),
    "--config unknown key": Row(
        lambda p: p.tune("--config", p.file("unknown.yaml", "learning_rat: 3e-5\n")),
        "no setting named", "learning_rat", "docs/settings.md"),
    # -- space file --
    "space file not YAML": Row(
        lambda p: p.tune("--space", space(p, "lr: {low: 1e-5, high\n")),
        "must be valid YAML", "space.yaml", "Fix the file"),
    "space unknown setting": Row(
        lambda p: p.tune("--space", space(p, {"lrate": {"low": 1e-5, "high": 1e-4}})),
        "which is not a setting", "'lrate'", "Use a setting name"),
    "space low above high": Row(
        lambda p: p.tune("--space", space(p, {"lr": {"low": 1e-3, "high": 1e-5}})),
        "low", "0.001", "high"),
    "space bad choices": Row(
        lambda p: p.tune("--space", space(p, {"batch_size": {"choices": []}})),
        "choices", "[]", "list"),
    # -- storage URL --
    "storage unknown scheme": Row(
        lambda p: p.tune("--storage", "nosuchdb://host/db"),
        "must be an Optuna storage URL", "'nosuchdb://host/db'", "Give one of those"),
    "storage bad sqlite path": Row(
        lambda p: p.tune("--storage", f"sqlite:///{p.tmp}/no/such/dir/study.db"),
        "must be an Optuna storage URL", "no/such/dir/study.db", "Check the URL"),
    # -- budget --
    "budget 10x": Row(lambda p: p.tune("--budget", "10x"),
                      "A budget must be a time", "'10x'", "Write it as '10m'"),
    "budget 0m": Row(lambda p: p.tune("--budget", "0m"),
                     "must be more than zero", "'0m'", "Give e.g. 10m"),
    "budget -5trials": Row(lambda p: p.tune("--budget", "-5trials"),
                           "A budget must be a time", "'-5trials'", "Write it as '10m'"),
    # -- continuing a run directory --
    "continue with another metric": Row(
        lambda p: p.resume("--metric", "accuracy"),
        "continues only with the settings it started with", "'accuracy'", "pass a new --out"),
    "continue with other data": Row(
        lambda p: p.resume(train=p.csv("other.csv", SENTIMENT_ROWS * 3)),
        "continues only with the settings it started with", "other.csv", "pass a new --out"),
    "continue with another strategy": Row(
        lambda p: p.resume("--strategy", "random"),
        "continues only with the settings it started with", "'random'", "pass a new --out"),
    # -- the run directory itself --
    "--out under a regular file": Row(
        lambda p: p.tune(out=p.file("plain.txt", "x") / "run"),
        "where a directory can be created", "plain.txt", "outside that file"),
    "--out is a file": Row(
        lambda p: p.tune(out=p.file("taken.txt", "x")),
        "must be a directory", "taken.txt", "Pass a directory path"),
    "train --out under a regular file": Row(
        lambda p: ["train", "--model", p.model, "--train", p.train, "--out",
                   p.file("plain.txt", "x") / "model"],
        "where a directory can be created", "plain.txt", "outside that file"),
    # -- the other commands --
    "train unknown optimizer": Row(
        lambda p: ["train", "--model", p.model, "--train", p.train, "--out", p.new,
                   "--optimizer", "lion"],
        "optimizer must be one of", "'lion'", "Pick one of those names"),
    "predict model missing": Row(
        lambda p: ["predict", p.tmp / "no-model", "--input", p.valid],
        "does not exist", "no-model", "Pass a saved model directory"),
    "predict input missing": Row(
        lambda p: ["predict", p.run, "--input", p.tmp / "absent.csv"],
        "must be an existing file", "absent.csv", "Check the path"),
    "predict output of an unknown format": Row(
        lambda p: ["predict", p.run, "--input", p.valid, "--output", p.tmp / "preds.xlsx"],
        "must end in", ".xlsx", "csv"),
    "report of a folder that is no run": Row(
        lambda p: ["report", p.folder("not-a-run")],
        "must be a run directory", "not-a-run has no pretune.yaml",
        "Pass the --out directory of a search"),
    "show of a missing run": Row(
        lambda p: ["show", p.tmp / "gone"],
        "must be a run directory", "gone", "Pass the --out directory of a search"),
    "show --top 0": Row(lambda p: ["show", p.run, "--top", "0"], "greater than or equal to 1", "'0'",
                        "pretune show --help"),
    "export unknown format": Row(
        lambda p: ["export", p.run, "--format", "xml"],
        "--format must be one of", "'xml'", "--format csv"),
}


def snapshot(root: Path) -> dict[str, tuple] | None:
    """Every file and folder under ``root``: size and content hash of each file."""
    if not root.exists():
        return None
    tree: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_dir():
            tree[name + "/"] = ("dir",)
        else:
            data = path.read_bytes()
            tree[name] = (len(data), hashlib.blake2b(data).hexdigest())
    return tree


@pytest.fixture(scope="module")
def paths(tiny_model_dir, tiny_search_run, tmp_path_factory) -> Paths:
    run, _, valid = tiny_search_run
    record = yaml.safe_load((run / "pretune.yaml").read_text())
    return Paths(tmp=tmp_path_factory.mktemp("bad-input"), model=tiny_model_dir,
                 train=Path(record["settings"]["data"]["train"]), valid=Path(valid), run=run,
                 new=run.parent / "never")


@pytest.fixture()
def fresh(paths, tmp_path) -> Paths:
    """``paths`` with a scratch folder of this row's own."""
    return Paths(tmp=tmp_path, model=paths.model, train=paths.train, valid=paths.valid,
                 run=paths.run, new=tmp_path / "outs" / "new-run")


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.mark.parametrize("name", list(ROWS))
def test_bad_input(name, fresh):
    from typer.testing import CliRunner

    from pretune.cli.main import app

    row = ROWS[name]
    args = [str(a) for a in row.args(fresh)]
    before = snapshot(fresh.run)
    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__}: {result.exception}")
    assert result.exit_code == 2, result.output
    line = one_error_line(result.stderr)
    if os.environ.get("SHOW_LINES"):
        print(f"\n[{name}] {line}")
    assert not LEAKS.search(result.output), result.output
    for part in (row.rule, row.value, row.fix):
        assert part in line, f"{part!r} not in: {line}"
    assert snapshot(fresh.run) == before, "the existing run directory changed"
    assert not fresh.new.exists(), "a new --out was created"


class Continuing(Paths):
    """Rows' `pretune tune` commands as the command that continues the search in ``run``."""

    def tune(self, *extra, out: Path | None = None, train: Path | None = None) -> list:
        return self.resume(*extra, train=train)


# Rows of `pretune tune` again, now with --out naming the existing search: a bad flag, budget,
# space, config, storage, data or model given when continuing must leave that search as it was.
AGAINST_THE_RUN = [
    "train file missing", "empty file", "garbage parquet",
    "unknown --fixed name", "--fixed lr out of range", "unknown metric", "unknown strategy",
    "unknown tracker", "--workers 0", "several workers on one SQLite file", "--config unknown key",
    "space low above high", "space unknown setting", "storage unknown scheme", "budget 10x",
    "budget 0m",
]


@pytest.mark.parametrize("name", AGAINST_THE_RUN)
def test_bad_input_given_to_an_existing_run_leaves_it_as_it_was(name, fresh):
    from typer.testing import CliRunner

    from pretune.cli.main import app

    row = ROWS[name]
    args = [str(a) for a in row.args(Continuing(**dataclasses.asdict(fresh)))]
    assert args[args.index("--out") + 1] == str(fresh.run)
    before = snapshot(fresh.run)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    line = one_error_line(result.stderr)
    assert not LEAKS.search(result.output), result.output
    for part in (row.rule, row.value, row.fix):
        assert part in line, f"{part!r} not in: {line}"
    assert snapshot(fresh.run) == before, "the existing run directory changed"


@pytest.mark.parametrize("name", ["train file missing", "budget 10x", "--seed not a number"])
def test_bad_input_in_a_process_of_its_own(name, fresh):
    """The real entry point: nothing but the one line reaches stderr, not even a warning."""
    args = [str(a) for a in ROWS[name].args(fresh)]
    done = subprocess.run([sys.executable, "-m", "pretune.cli.main", *args],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 2, done.stderr
    one_error_line(done.stderr)
    assert not LEAKS.search(done.stderr + done.stdout), done.stderr
    assert not fresh.new.exists()


def test_there_are_at_least_25_rows():
    assert len({r.rule for r in ROWS.values()}) >= 25  # rules, not only values, differ


def test_a_tracker_creates_nothing_before_the_input_is_checked(fresh):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from typer.testing import CliRunner

    from pretune.cli.main import app

    args = [str(a) for a in fresh.tune("--log-to", "mlflow", "--budget", "10x")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    line = one_error_line(result.stderr)
    budget = ROWS["budget 10x"]
    for part in (budget.rule, budget.value, budget.fix):  # the same line as without a tracker
        assert part in line, f"{part!r} not in: {line}"
    assert not fresh.new.exists()
    assert not list(fresh.tmp.glob("**/mlflow.db")) and not (Path.cwd() / "mlruns").exists()


def test_postgresql_without_its_driver(fresh, monkeypatch):
    """Both drivers made unimportable (a None in sys.modules), whatever this machine has."""
    import importlib.util

    from typer.testing import CliRunner

    from pretune.cli.main import app

    for driver in ("psycopg2", "psycopg"):
        monkeypatch.setitem(sys.modules, driver, None)
        assert importlib.util.find_spec(driver) is None
    url = "postgresql://nobody@127.0.0.1:1/none"
    result = CliRunner().invoke(app, [str(a) for a in fresh.tune("--storage", url)])
    assert result.exit_code == 2, result.output
    line = one_error_line(result.stderr)
    assert not LEAKS.search(result.output), result.output
    assert "postgresql:// --storage needs the optional package 'psycopg'" in line, line
    assert line.endswith("Install it with: pip install 'pretune[psycopg]'"), line
    assert not fresh.new.exists()


def test_continuing_with_a_setting_the_search_did_not_have_says_to_leave_it_out(fresh):
    from typer.testing import CliRunner

    from pretune.cli.main import app

    texts = fresh.file("more-texts.txt", "a text\nanother text\n")
    before = snapshot(fresh.run)
    result = CliRunner().invoke(app, [str(a) for a in fresh.resume("--unlabeled", texts)])
    assert result.exit_code == 2, result.output
    line = one_error_line(result.stderr)
    assert f"was started with no unlabeled and this run has unlabeled '{texts}'" in line, line
    assert "Run without unlabeled to continue it" in line, line
    assert snapshot(fresh.run) == before


def test_continuing_after_the_data_changed_leaves_the_run_as_it_was(paths, tmp_path):
    """The one mismatch found only after the data is read (its content fingerprint)."""
    import shutil

    from typer.testing import CliRunner

    from pretune.cli.main import app

    root = tmp_path / "copy"
    shutil.copytree(paths.run.parent, root)  # run/, data/ and space.yaml of that search
    copy = Paths(tmp=tmp_path, model=paths.model, train=root / "data" / "train.csv",
                 valid=root / "data" / "valid.csv", run=root / "run", new=tmp_path / "never")
    record_file = copy.run / "pretune.yaml"
    record = yaml.safe_load(record_file.read_text())
    record["settings"]["data"].update(train=str(copy.train), valid=str(copy.valid))
    record_file.write_text(yaml.safe_dump(record, sort_keys=False))
    rows = pd.read_csv(copy.train)
    rows.loc[0, "text"] = "an edited first example"  # the data changed since the search began
    rows.to_csv(copy.train, index=False)
    before = snapshot(copy.run)

    result = CliRunner().invoke(app, [str(a) for a in copy.resume()])
    assert result.exit_code == 2, result.output
    line = one_error_line(result.stderr)
    assert "continues only with the settings it started with" in line
    assert "the data (its content fingerprint)" in line and "pass a new --out" in line
    assert snapshot(copy.run) == before


def test_explain_refuses_what_it_cannot_do_in_one_line(tiny_model_dir, tmp_path):
    import pytest

    pytest.importorskip("captum")
    from tests.search.helpers import cli

    rows = tmp_path / "rows.csv"
    rows.write_text("text\nfine\n")
    r = cli("explain", tiny_model_dir, "--input", rows, "--output", tmp_path / "e.txt")
    assert r.exit_code == 2, r.output
    line = one_error_line(r.stderr)
    assert "--output must end in .html or .csv, but got 'e.txt'" in line, line
    assert line.endswith("Choose one of those extensions."), line
    r = cli("explain", tiny_model_dir, "--input", tmp_path / "none.csv", "--output", tmp_path / "e.html")
    assert r.exit_code == 2, r.output
    line = one_error_line(r.stderr)
    assert "must be an existing file" in line and "none.csv" in line, line
    assert line.endswith("Check the path."), line
    assert not LEAKS.search(r.output) and not (tmp_path / "e.html").exists()
