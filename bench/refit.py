"""What a refit gains: one fixed recipe trained on the training rows, and on them plus more rows.

``pretune tune`` ends by training the recipe behind ``best/`` again on the training and
validation rows (``pretune.search.refit``). This script measures that step alone, with the
search left out, so that its gain is seen on data where the added rows are like the training
rows, not only on SST-2's protocol, whose validation rows (whole sentences) are more like its
test rows than its training rows (phrases) are.

Protocol
--------
* Recipe: pretune's first recipe from practice (AdamW, lr 1e-4, batch 32, 3 epochs, linear
  decay, 6% warmup, weight decay 0.01), with nothing chosen on the validation rows (no early
  stopping, no checkpoint soup), the packaged all-MiniLM-L6-v2, seeds ``--seeds`` (0 1 2).
* ``sst2-valid``: the 2,000 SST-2 training rows of the other benchmarks (sampled with seed 0),
  against them plus the 872 validation sentences; test accuracy on test.csv (1,821 rows).
* ``sst2-phrases``: the same 2,000 rows against them plus 872 other training phrases (sampled
  with seed 2 from the rest of train.csv): rows drawn like the training rows.
* ``conll``: 2,000 CoNLL-2003 training sentences (``random.Random(0).sample``, as ``ner.py``)
  against them plus the 3,250 validation sentences; seqeval strict entity F1 on test.

Run it (from the repo root)::

    .venv/bin/python bench/refit.py                       # all three, seeds 0 1 2 (~25 minutes)
    .venv/bin/python bench/refit.py --checks conll --seeds 0

Exit status: 0 when every run finished, 2 when the data is missing or an option is wrong.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import check_data, data_files, model_dir, print_table, train_sample  # noqa: E402

RECIPE = dict(lr=1e-4, batch_size=32, epochs=3, schedule="linear", warmup_ratio=0.06,
              weight_decay=0.01, patience=None, checkpoint_soup=1, evals_per_epoch=1)
CHECKS = ("sst2-valid", "sst2-phrases", "conll")


def sst2_files(root: Path, check: str) -> tuple[Path, Path, Path, Path]:
    """(training rows, training plus the added rows, validation, test) for an SST-2 check."""
    import pandas as pd

    files = data_files()
    sample = train_sample(root)
    train = pd.read_csv(sample)
    if check == "sst2-valid":
        added = pd.read_csv(files["validation"])
    else:
        full = pd.read_csv(files["train"])
        added = full[~full["text"].isin(set(train["text"]))].sample(872, random_state=2)
    both = root / f"{check}-train.csv"
    pd.concat([train, added]).to_csv(both, index=False)
    return sample, both, files["validation"], files["test"]


def conll_files(root: Path) -> tuple[Path, Path, Path, Path]:
    import ner

    files = ner.prepare(root, argparse.Namespace(train_rows=2000, valid_rows=None,
                                                 test_rows=None))
    both = ner.write(root / "conll-train.jsonl",
                     ner.read(files["train"]) + ner.read(files["valid"]))
    return files["train"], both, files["valid"], files["test"]


def score(check: str, model: Path, test: Path) -> float:
    import pandas as pd

    import pretune

    preds = pretune.predict(model, test)
    if check == "conll":
        import ner

        return ner.entity_f1([r["tags"] for r in ner.read(test)],
                             [list(p) for p in preds["prediction"]])
    truth = pd.read_csv(test)["label"].astype(str).to_numpy()
    return float((preds["prediction"].astype(str).to_numpy() == truth).mean())


def one_check(check: str, seeds: list[int], root: Path) -> list[list]:
    import pretune

    train, both, valid, test = (conll_files(root) if check == "conll"
                                else sst2_files(root, check))
    rows = []
    for seed in seeds:
        scores = {}
        for name, rows_file in (("train", train), ("train+added", both)):
            started = time.perf_counter()
            out = root / f"{check}-{name}-{seed}"
            pretune.train(model=model_dir(), train=str(rows_file), valid=str(valid),
                          out=str(out), seed=seed, **RECIPE)
            scores[name] = score(check, out, test)
            print(f"{check} seed {seed} {name}: {scores[name]:.4f} "
                  f"({time.perf_counter() - started:.0f}s)", flush=True)
        rows.append([check, seed, scores["train"], scores["train+added"],
                     scores["train+added"] - scores["train"]])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checks", default=",".join(CHECKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="keep the models here")
    args = parser.parse_args(argv)
    checks = [c for c in args.checks.split(",") if c]
    if not checks or any(c not in CHECKS for c in checks):
        print(f"--checks takes a comma-separated list of {', '.join(CHECKS)}, but got "
              f"{args.checks!r}.", file=sys.stderr)
        return 2
    check_data()
    root = args.out or Path(tempfile.mkdtemp(prefix="refit-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = [row for check in checks for row in one_check(check, args.seeds, root)]
    table = [[c, s, f"{a:.4f}", f"{b:.4f}", f"{d:+.4f}"] for c, s, a, b, d in rows]
    for check in checks:
        mine = [r for r in rows if r[0] == check]
        table.append([check, "mean", *(f"{statistics.mean(r[i] for r in mine):+.4f}" if i == 4
                                       else f"{statistics.mean(r[i] for r in mine):.4f}"
                                       for i in (2, 3, 4))])
    print("\ntest score of one fixed recipe (accuracy; entity F1 for conll)")
    print_table(["check", "seed", "training rows", "with the added rows", "gain"], table)
    print(f"models: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
