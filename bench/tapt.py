"""Continued pretraining (TAPT) on SST-2: the same fine-tuning run with and without it.

Protocol
--------
* Data: SST-2 from ``../shared/data/sst2``; the 2,000 labelled training rows of the other
  benches (``df.sample(2000, random_state=0)``); ``--unlabeled-rows`` other training sentences
  (none of the 2,000, labels dropped) as the ``--unlabeled`` file, the in-domain text without
  labels that task-adaptive pretraining is for. Validation and test texts are never used for
  it. Both runs are scored on ``validation.csv`` and ``test.csv``.
* Model: the packaged all-MiniLM-L6-v2.
* Runs: ``pretune.train`` with one fixed recipe (AdamW, lr 1e-4, batch 32, 3 epochs, linear
  decay, 6% warmup: the first recipe of pretune's priors) and ``tapt_steps`` 0, then
  ``--tapt-steps``; the same seeds (``--seeds``) for both, one after the other in this process.
* Reported per run: validation and test accuracy, the seconds spent on the masked-LM stage and
  on fine-tuning; then the mean difference over seeds.

Run it (from the repo root)::

    .venv/bin/python bench/tapt.py --tapt-steps 200 --seeds 0

Exit status: 0 when every run finished, 2 when the data is missing or an option is wrong.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import (  # noqa: E402 - bench/common.py sets the offline switches first
    SAMPLE_SEED, check_data, data_files, fail, model_dir, print_table, test_accuracy, train_sample)

RECIPE = dict(optimizer="adamw", lr=1e-4, weight_decay=0.01, batch_size=32, epochs=3,
              schedule="linear", warmup_ratio=0.06)


def unlabeled_file(out_dir: Path, train_csv: Path, rows: int) -> Path:
    """``rows`` training sentences that are not among the labelled sample, one per line."""
    import pandas as pd

    path = out_dir / f"unlabeled-{rows}.txt"
    if not path.is_file():
        everything = pd.read_csv(data_files()["train"])
        labelled = set(pd.read_csv(train_csv)["text"])
        rest = everything[~everything["text"].isin(labelled)]
        texts = rest.sample(rows, random_state=SAMPLE_SEED + 1)["text"].astype(str)
        path.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n", encoding="utf-8")
    return path


def one_run(train_csv: Path, unlabeled: Path, steps: int, seed: int, out: Path,
            threads: int | None) -> dict:
    import pretune

    files = data_files()
    result = pretune.train(train=str(train_csv), valid=str(files["validation"]),
                           model=model_dir(), out=out, seed=seed, tapt_steps=steps,
                           unlabeled=str(unlabeled) if steps else None, threads=threads,
                           **RECIPE)
    timings = result.timings
    return {"tapt_steps": steps, "seed": seed,
            "valid": float(result.metrics["accuracy"]),
            "test": test_accuracy(out, files["test"]),
            "tapt_s": float(timings.get("tapt", 0.0)), "train_s": float(timings.get("train", 0.0))}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tapt-steps", type=int, default=200,
                        help="masked-LM steps of the adapted run (default 200)")
    parser.add_argument("--unlabeled-rows", type=int, default=4000,
                        help="unlabeled SST-2 training sentences for TAPT (default 4000)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="seeds; each runs with and without TAPT (default 0)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where the runs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.tapt_steps < 1:
        fail(f"error: --tapt-steps must be at least 1 (0 is the baseline every seed runs), "
             f"but got {args.tapt_steps}.")
    if args.unlabeled_rows < 1:
        fail(f"error: --unlabeled-rows must be at least 1, but got {args.unlabeled_rows}.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_data()
    with tempfile.TemporaryDirectory(prefix="pretune-tapt-bench-") as scratch:
        out_dir = (args.out_dir or Path(scratch)).resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        train_csv = train_sample(out_dir)
        unlabeled = unlabeled_file(out_dir, train_csv, args.unlabeled_rows)
        rows = []
        for seed in args.seeds:
            for steps in (0, args.tapt_steps):
                row = one_run(train_csv, unlabeled, steps, seed,
                              out_dir / f"seed{seed}-tapt{steps}", args.threads)
                print(f"[tapt] seed {seed}, tapt_steps {steps}: valid {row['valid']:.4f}, "
                      f"test {row['test']:.4f}, tapt {row['tapt_s']:.0f}s, "
                      f"train {row['train_s']:.0f}s", flush=True)
                rows.append(row)
    print()
    print(f"SST-2, 2,000 labelled rows (seed {SAMPLE_SEED}), {args.unlabeled_rows} unlabeled "
          f"training sentences for TAPT, recipe {RECIPE}")
    print_table(("tapt_steps", "seed", "valid acc", "test acc", "tapt s", "train s"),
                [(r["tapt_steps"], r["seed"], f"{r['valid']:.4f}", f"{r['test']:.4f}",
                  f"{r['tapt_s']:.0f}", f"{r['train_s']:.0f}") for r in rows])
    base = [r for r in rows if r["tapt_steps"] == 0]
    adapted = [r for r in rows if r["tapt_steps"] > 0]
    for split in ("valid", "test"):
        diff = sum(a[split] - b[split] for a, b in zip(adapted, base)) / len(base)
        print(f"{split}: TAPT - none = {100 * diff:+.2f} points (mean over {len(base)} seeds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
