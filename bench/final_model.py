"""The final model built from the whole search, against the best single trial of the same search.

Protocol
--------
* Data: 2,000 rows sampled with seed 0 from ``../shared/data/sst2/train.csv``; tuned on
  ``validation.csv`` (872 rows), scored on ``test.csv`` (1,821 rows), which the search never sees.
* Model: the packaged all-MiniLM-L6-v2; pretune's defaults (its own pooling, the default space,
  priors, checkpoint soups, ``--keep 5``, the final assembly) and ``--budget`` (10 minutes).
* Seeds: ``--seeds`` (0 1 2), one search each, one after another in this process.
* Reported per seed, on test: the best single trial (the kept model of the trial with the best
  validation score; with ``checkpoint_soup`` on this is already the trial's within-trial soup,
  and its validation score beside the best single evaluation's shows what that soup added),
  the soup across trials, the ensemble (``pretune predict --ensemble``), the distilled
  ensemble, and the model in ``best/``; then the mean and standard deviation over seeds.
  A candidate the search did not build (no second model joined, or no time; with ``refit``
  on, the default, the ensemble is not distilled) is ``-``. ``best/ is`` says what the
  assembly chose and whether its recipe was then refit on the training and validation rows
  (``pretune.search.refit``); ``--no-refit`` runs the searches without it.

Run it (from the repo root)::

    .venv/bin/python bench/final_model.py --budget 10m --seeds 0 1 2
    .venv/bin/python bench/final_model.py --budget 10m --seeds 0 --unlabeled 4000

``--unlabeled N`` gives each search N other texts of train.csv without their labels as
``--unlabeled`` (a semi-supervised setting, not the SST-2 protocol above), with ``tapt_steps``
pinned at 0 so that they serve the distilled student alone.

Exit status: 0 when every search finished, 2 when the data is missing or an option is wrong.
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

COLUMNS = ("best trial", "x-trial soup", "ensemble", "distilled", "best/")


def accuracy(frame, truth) -> float:
    return float((frame["prediction"].astype(str).to_numpy() == truth).mean())


def unlabeled_texts(root: Path, rows: int) -> Path:
    """``rows`` texts of train.csv outside the 2,000 sampled ones, labels dropped, one per line."""
    import pandas as pd

    path = root / f"unlabeled-{rows}.txt"
    if not path.is_file():
        train = pd.read_csv(data_files()["train"])
        sampled = set(pd.read_csv(train_sample(root))["text"])
        rest = train[~train["text"].isin(sampled)].sample(rows, random_state=1)
        path.write_text("\n".join(t.replace("\n", " ") for t in rest["text"]) + "\n")
    return path


def one_search(seed: int, budget: str, root: Path, unlabeled: int = 0, refit: bool = True
               ) -> dict:
    import pandas as pd
    import yaml

    import pretune
    from pretune.search.assemble import kept_models

    files = data_files()
    out = root / (f"seed{seed}" + (f"-unlabeled{unlabeled}" if unlabeled else "")
                  + ("" if refit else "-no-refit"))
    # tapt_steps pinned at 0: the texts serve the distilled student alone here
    extra = ({"unlabeled": str(unlabeled_texts(root, unlabeled)), "fixed": {"tapt_steps": 0}}
             if unlabeled else {})
    started = time.perf_counter()
    result = pretune.tune(model=model_dir(), train=str(train_sample(root)),
                          valid=str(files["validation"]), budget=budget, out=out, seed=seed,
                          refit=refit, **extra)
    seconds = time.perf_counter() - started
    truth = pd.read_csv(files["test"])["label"].astype(str).to_numpy()
    test = files["test"]
    record = yaml.safe_load((out / "plan.yaml").read_text())
    plan = record.get("assembly") or {}
    kept = kept_models(out, result.metric, result.direction)
    chosen = plan.get("chosen", "trial")
    row: dict = {"seed": seed, "seconds": round(seconds), "trials": len(result.trials),
                 "chosen": "refit" if record.get("refit") else chosen}
    if kept:
        lead = kept[0]
        history = (lead.meta.get("training") or {})
        row["best trial"] = accuracy(pretune.predict(lead.path, test), truth)
        row["trial valid"] = lead.value
        row["trial soup of"] = len(history.get("soup") or [1])
    soups = sorted((out / "assembly").glob("soup-*"))
    if soups:
        row["x-trial soup"] = accuracy(pretune.predict(soups[0], test), truth)
    if (out / "ensemble.yaml").is_file():
        row["ensemble"] = accuracy(pretune.predict(out, test, ensemble=True), truth)
    if (out / "assembly" / "distilled" / "config.json").is_file():
        row["distilled"] = accuracy(pretune.predict(out / "assembly" / "distilled", test), truth)
    row["best/"] = accuracy(pretune.predict(out, test), truth)
    row["candidates"] = {c["kind"]: round(c.get(result.metric) or float("nan"), 4)
                         for c in plan.get("candidates", [])}
    print(f"seed {seed}: {row}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", default="10m")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="keep the run directories here")
    parser.add_argument("--unlabeled", type=int, default=0,
                        help="give the search this many other training texts, without labels, "
                             "as --unlabeled (the distilled student learns from them)")
    parser.add_argument("--no-refit", action="store_true",
                        help="search without refitting best/ on the training and validation rows")
    args = parser.parse_args(argv)
    check_data()
    root = args.out or Path(tempfile.mkdtemp(prefix="final-model-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = [one_search(seed, args.budget, root, args.unlabeled, not args.no_refit)
            for seed in args.seeds]

    def cell(row, key):
        return f"{row[key]:.4f}" if key in row else "-"

    given = f", {args.unlabeled:,} unlabeled texts" if args.unlabeled else ""
    given += ", no refit" if args.no_refit else ""
    print(f"\nSST-2, 2,000 training rows{given}, budget {args.budget}: test accuracy (1,821 rows)")
    table = [[r["seed"], r["trials"], r["chosen"], *(cell(r, k) for k in COLUMNS)] for r in rows]
    for name, fn in (("mean", statistics.mean), ("std", statistics.pstdev)):
        table.append([name, "", "", *(f"{fn([r[k] for r in rows if k in r]):.4f}"
                                      if any(k in r for r in rows) else "-" for k in COLUMNS)])
    print_table(["seed", "trials", "best/ is", *COLUMNS], table)
    gain = [r["best/"] - r["best trial"] for r in rows if "best trial" in r]
    if gain:
        print(f"best/ minus best single trial: mean {statistics.mean(gain):+.4f} over "
              f"{len(gain)} seeds ({', '.join(f'{g:+.4f}' for g in gain)})")
    print(f"run directories: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
