"""The data fraction on large data: the search on all rows against one on part of them.

Protocol
--------
* Data: SST-2 from ``../shared/data/sst2``; ``--train-rows`` training rows (default: all
  67,349), so that one full trial does not fit the budget; tuned on ``validation.csv``, scored
  on ``test.csv``.
* Model: the packaged all-MiniLM-L6-v2.
* Runs: ``pretune.tune`` with its defaults and ``--budget``, twice, one after the other in this
  process, each in its own run directory (no cache shared). ``all rows``: as it comes (the
  first recipe runs on every row until the deadline stops it; it is evaluated then).
  ``fraction``: ``--data-fraction`` F, where F lets ``--trials`` typical trials finish in the
  budget (from the first run's plan: budget / (trials x the time of one trial on all rows)),
  unless ``--fraction`` gives it: each epoch runs on part of the rows and the schedule ends in
  time.
* Reported per run: the fraction, the trials and how they ended, the best trial's validation
  accuracy, the test accuracy of the model in best/, and the seconds of the search.

Run it (from the repo root)::

    .venv/bin/python bench/data_fraction.py --budget 5m

Exit status: 0 when both runs finished, 2 when the data is missing or an option is wrong.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import (  # noqa: E402 - bench/common.py sets the offline switches first
    check_data, data_files, fail, model_dir, print_table, test_accuracy, train_sample)

RUNS = ("all rows", "fraction")


def one_run(name: str, train_csv: Path, budget: str, out: Path, threads: int | None,
            fraction: float | None = None) -> dict:
    import pretune

    files = data_files()
    extra = {} if threads is None else {"threads": threads}
    started = time.perf_counter()
    result = pretune.tune(train=str(train_csv), valid=str(files["validation"]), model=model_dir(),
                          budget=budget, out=out, data_fraction=fraction, **extra)
    seconds = time.perf_counter() - started
    plan = result.plan or {}
    return {"run": name, "fraction": float(plan.get("data_fraction", 1.0)),
            "trials": _tally(result.trials),
            "valid": float(result.best_metrics.get("accuracy", float("nan"))),
            "test": test_accuracy(out, files["test"]), "seconds": seconds,
            "trial_seconds": plan.get("trial_seconds"),
            "best": dict(result.best_params)}


def _tally(trials) -> str:
    counts = trials["state"].str.lower().value_counts()
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def fraction_for(first: dict, budget: str, trials: int) -> float:
    """The fraction at which ``trials`` trials of the first run's plan fit ``budget``."""
    from pretune.config import Budget

    seconds = Budget.parse(budget).seconds
    if not seconds or not first.get("trial_seconds"):
        fail("error: the fraction comes from a time budget and a measured trial time; give "
             "--budget as a time (5m) or --fraction F.")
    return float(f"{min(1.0, seconds / (trials * first['trial_seconds'])):.3g}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", default="5m", help="time budget of each search (default 5m)")
    parser.add_argument("--train-rows", type=int, default=None,
                        help="training rows to sample (default: all of train.csv)")
    parser.add_argument("--trials", type=int, default=2,
                        help="typical trials the fraction lets finish (default 2)")
    parser.add_argument("--fraction", type=float, default=None,
                        help="the fraction run's --data-fraction (default: from --trials)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where the runs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.train_rows is not None and args.train_rows < 100:
        fail(f"error: --train-rows must be at least 100, but got {args.train_rows}.")
    if args.trials < 1:
        fail(f"error: --trials must be at least 1, but got {args.trials}.")
    if args.fraction is not None and not 0 < args.fraction <= 1:
        fail(f"error: --fraction must be in (0, 1], but got {args.fraction}.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_data()
    with tempfile.TemporaryDirectory(prefix="pretune-fraction-bench-") as scratch:
        out_dir = (args.out_dir or Path(scratch)).resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        train_csv = (data_files()["train"] if args.train_rows is None
                     else train_sample(out_dir, args.train_rows))
        rows = []
        for name in RUNS:
            fraction = None
            if name == "fraction":
                fraction = args.fraction or fraction_for(rows[0], args.budget, args.trials)
            row = one_run(name, train_csv, args.budget, out_dir / name.replace(" ", "-"),
                          args.threads, fraction)
            print(f"[fraction] {name}: data_fraction {row['fraction']:g}, trials {row['trials']}, "
                  f"valid {row['valid']:.4f}, test {row['test']:.4f}, {row['seconds']:.0f}s, "
                  f"best {row['best']}", flush=True)
            rows.append(row)
    print()
    print(f"SST-2, {train_csv.name}, budget {args.budget}, all-MiniLM-L6-v2, pretune defaults")
    print_table(("run", "data_fraction", "trials", "valid acc", "test acc", "seconds"),
                [(r["run"], f"{r['fraction']:g}", r["trials"], f"{r['valid']:.4f}",
                  f"{r['test']:.4f}", f"{r['seconds']:.0f}") for r in rows])
    for split in ("valid", "test"):
        diff = rows[1][split] - rows[0][split]
        print(f"{split}: fraction - all rows = {100 * diff:+.2f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
