"""Large data on a short budget: the search as it comes against the same with ``--screen``.

Protocol
--------
* Data: SST-2 from ``../shared/data/sst2``; ``--train-rows`` training rows (default: all
  67,349), so that one full trial does not fit the budget; tuned on ``validation.csv``, scored
  on ``test.csv``.
* Model: the packaged all-MiniLM-L6-v2.
* Runs: ``pretune.tune`` with its defaults and ``--budget``, one after the other in this
  process, each in its own run directory (no cache shared):

  - ``screen``: ``--screen``. The trials screen recipes on a data fraction (six typical
    trials in half the budget; evaluations and the pruner's rungs every half of such an epoch)
    and the refit trains the chosen recipe on as many rows as the other half allows, its
    schedule fitted to them.
  - ``default``: as it comes, every trial on all rows: one trial does not fit the budget, so
    the first recipe runs until the deadline stops it (its schedule cut where it stands) and
    is evaluated then.
  - ``fraction``: only with ``--fraction F``: ``--data-fraction F``.

* Reported per run: the trials' data fraction, the trials and how they ended, the distinct
  settings judged (trials that reached an evaluation), what the refit trained on, the best
  trial's validation accuracy, the test accuracy of the model in best/, and the seconds.

Run it (from the repo root)::

    .venv/bin/python bench/data_fraction.py --budget 10m

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

def one_run(name: str, train_csv: Path, budget: str, out: Path, threads: int | None,
            fraction: float | None = None, seed: int | None = None, screen: bool = False
            ) -> dict:
    import pretune

    files = data_files()
    extra = {} if threads is None else {"threads": threads}
    if seed is not None:
        extra["seed"] = seed
    started = time.perf_counter()
    result = pretune.tune(train=str(train_csv), valid=str(files["validation"]), model=model_dir(),
                          budget=budget, out=out, data_fraction=fraction, screen=screen,
                          **extra)
    seconds = time.perf_counter() - started
    plan, again = result.plan or {}, result.refit or {}
    return {"run": name, "fraction": float(plan.get("data_fraction", 1.0)),
            "trials": _tally(result.trials), "judged": _judged(result.trials),
            "refit": (f"{again['data_fraction']:g} x {again['epochs']:g} ep, "
                      f"{again['seconds']:.0f}s" if again else "-"),
            "valid": float(result.best_metrics.get("accuracy", float("nan"))),
            "test": test_accuracy(out, files["test"]), "seconds": seconds,
            "best": dict(result.best_params)}


def _tally(trials) -> str:
    counts = trials["state"].str.lower().value_counts()
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def _judged(trials) -> int:
    """Distinct settings that reached an evaluation (a score, or a pruning at a rung)."""
    params = [c for c in trials.columns if c.startswith("params_")]
    scored = trials[trials["state"].str.upper().isin(["COMPLETE", "PRUNED"])]
    return len(scored[params].astype(str).drop_duplicates()) if params else len(scored)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", default="10m", help="time budget of each search (default 10m)")
    parser.add_argument("--train-rows", type=int, default=None,
                        help="training rows to sample (default: all of train.csv)")
    parser.add_argument("--fraction", type=float, default=None,
                        help="also run with --data-fraction F")
    parser.add_argument("--only", choices=("screen", "default"), default=None,
                        help="run one of the two runs")
    parser.add_argument("--seed", type=int, default=None, help="the search's seed (default 0)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where the runs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.train_rows is not None and args.train_rows < 100:
        fail(f"error: --train-rows must be at least 100, but got {args.train_rows}.")
    if args.fraction is not None and not 0 < args.fraction <= 1:
        fail(f"error: --fraction must be in (0, 1], but got {args.fraction}.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_data()
    runs = {"screen": None, "default": None}
    if args.only:
        runs = {args.only: runs[args.only]}
    if args.fraction is not None:
        runs["fraction"] = args.fraction
    with tempfile.TemporaryDirectory(prefix="pretune-fraction-bench-") as scratch:
        out_dir = (args.out_dir or Path(scratch)).resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        train_csv = (data_files()["train"] if args.train_rows is None
                     else train_sample(out_dir, args.train_rows))
        rows = []
        for name, fraction in runs.items():
            row = one_run(name, train_csv, args.budget, out_dir / name.replace(" ", "-"),
                          args.threads, fraction, args.seed, screen=name == "screen")
            print(f"[fraction] {name}: data_fraction {row['fraction']:g}, trials {row['trials']}, "
                  f"judged {row['judged']}, refit {row['refit']}, valid {row['valid']:.4f}, "
                  f"test {row['test']:.4f}, {row['seconds']:.0f}s, best {row['best']}", flush=True)
            rows.append(row)
    print()
    print(f"SST-2, {train_csv.name}, budget {args.budget}, all-MiniLM-L6-v2, pretune defaults, "
          f"seed {args.seed or 0}; valid acc: the best trial's (a refit's model has seen them)")
    print_table(("run", "data_fraction", "trials", "settings judged", "refit (fraction x epochs)",
                 "valid acc", "test acc", "seconds"),
                [(r["run"], f"{r['fraction']:g}", r["trials"], r["judged"], r["refit"],
                  f"{r['valid']:.4f}", f"{r['test']:.4f}", f"{r['seconds']:.0f}") for r in rows])
    if len(rows) > 1:
        for split in ("valid", "test"):
            diff = rows[0][split] - rows[1][split]
            print(f"{split}: {rows[0]['run']} - {rows[1]['run']} = {100 * diff:+.2f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
