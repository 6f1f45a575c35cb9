"""Distillation on SST-2: a layers:3 student of a tuned MiniLM, with and without its teacher.

Protocol
--------
* Data: SST-2 from ``../shared/data/sst2``; 2,000 training rows sampled once as in
  ``tune_vs_hf.py`` (``df.sample(2000, random_state=0)``); every search tunes on
  ``validation.csv``; every model is scored on ``test.csv``.
* Teacher: ``pretune.tune`` on the packaged all-MiniLM-L6-v2 (6 layers) with its defaults
  within ``--teacher-budget``.
* Student with its teacher: ``pretune.distill(teacher_run, student="layers:3")``: the teacher's
  layers 0, 2 and 4 (its embeddings and head too), searched within ``--student-budget`` over the
  default space plus ``distill_alpha`` and ``distill_temperature``.
* The same student without a teacher: the same call with ``distill_alpha=0`` pinned (the loss is
  the labels' cross-entropy alone), the same budget, its own run directory.
* Reported: parameters, size on disk, validation accuracy and prediction speed (examples/s on
  the validation set, teacher and student side by side in one process, same batch size and
  threads; from each distill.yaml), and test accuracy of all three.

Run it (from the repo root)::

    .venv/bin/python bench/distill.py --teacher-budget 2m --student-budget 2m

Exit status: 0 when every run finished, 2 when the data is missing or an option is wrong.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import (  # noqa: E402
    check_data, data_files, fail, model_dir, print_table, test_accuracy, train_sample)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher-budget", default="2m")
    parser.add_argument("--student-budget", default="2m")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/bench-distill"))
    args = parser.parse_args(argv)
    check_data()
    out = args.out_dir
    if out.exists() and any(out.iterdir()):
        fail(f"error: {out} already holds runs; pass another --out-dir.")
    out.mkdir(parents=True, exist_ok=True)

    import pretune

    files = data_files()
    train = train_sample(out)
    clock = time.perf_counter()
    teacher = pretune.tune(model=model_dir(), train=str(train), valid=str(files["validation"]),
                           budget=args.teacher_budget, out=out / "teacher")
    seconds = {"teacher": time.perf_counter() - clock}
    runs = {}
    for name, directory, fixed in (
            ("student + teacher", "student-kd", None),
            ("student alone", "student-alone", {"distill_alpha": 0.0, "distill_temperature": 1.0})):
        clock = time.perf_counter()
        runs[name] = pretune.distill(teacher.path, student="layers:3", budget=args.student_budget,
                                     out=out / directory,
                                     fixed=fixed)
        seconds[name] = time.perf_counter() - clock

    test = files["test"]
    kd = runs["student + teacher"]
    rows = []
    for name, row, path in (("teacher (MiniLM-L6)", kd.teacher, kd.teacher_path),
                            *((f"{n} (layers:3)", r.student, r.student_path)
                              for n, r in runs.items())):
        rows.append([name, row["layers"], f"{row['parameters']:,}", f"{row['size_mb']:.1f}",
                     f"{row['accuracy']:.4f}", f"{test_accuracy(path, test):.4f}",
                     f"{row['examples_per_s']:.0f}"])
    print(f"SST-2, {len(open(train).readlines()) - 1} training rows; teacher budget "
          f"{args.teacher_budget}, student budgets {args.student_budget}")
    print_table(["model", "layers", "parameters", "MB", "valid acc", "test acc", "examples/s"],
                rows)
    for name, r in runs.items():
        print(f"{name}: speed-up {r.ratios['speedup']:.2f}x (vs its teacher, measured in the "
              f"same process), parameters {r.ratios['parameters']:.2f}x, best settings "
              f"{ {k: round(v, 3) if isinstance(v, float) else v for k, v in r.tune.best_params.items() if k.startswith('distill')} }, "
              f"{len(r.tune.trials)} trials in {seconds[name]:.0f}s")
    print(f"teacher: {len(teacher.trials)} trials in {seconds['teacher']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
