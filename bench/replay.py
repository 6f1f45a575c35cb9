"""Search strategies replayed on a table of learning curves: which one spends a budget best?

Protocol
--------
* Table: ``../shared/data/hpo/taskset_imdb_rnn/valid_loss.csv`` (relative to the repo root):
  6 TaskSet tasks (IMDB text RNNs) x 1,000 Adam configurations (8 parameters) x the validation
  loss at 51 checkpoints. Lower is better.
* Space: each of the 8 parameters becomes a coordinate in [0, 1]: log10 of its value
  (log10(1 - beta) for beta1 and beta2), scaled over the task's 1,000 rows. A strategy samples
  the 8 coordinates uniformly or by its model; the proposed point maps to the nearest row (in
  Euclidean distance) that this study has not evaluated yet, so no row is paid for twice.
* A trial walks its row's curve: checkpoint k (k = 0..50) is reported to Optuna at step k + 1,
  so pruners act on it. A NaN checkpoint (a diverged run) fails the trial there. Cost is counted
  in checkpoints: a trial that stops at step s (pruned or failed) costs s; a full curve costs 51.
* The pick is the complete trial with the lowest final loss (checkpoint 50); a strategy is
  scored at a budget of B full-curve equivalents (B x 51 checkpoints) by the pick among the
  trials that finished within that cost. A study ends at the largest budget or when every row of
  the task has been evaluated.
* Score: normalized regret = (final loss of the pick - best final loss in the task's table) /
  (median final loss of the task's finite rows - best). 0 is the table's best configuration, 1
  is a typical (median) configuration, which on these tasks is chance level (loss ~0.693). A
  strategy with no complete trial within a budget scores 1 there.
* Contenders: ``pretune`` is strategy ``auto`` built by the same ``strategies.build`` that
  ``pretune tune`` calls, on a fidelity of steps 1..51 whose first rung is the strategy's share
  of the longest trial (``Strategy.fidelity``), as in a real search. Optuna's bare defaults:
  ``TPESampler()``, ``TPESampler()`` + ``MedianPruner()``, ``RandomSampler()``,
  ``RandomSampler()`` + ``HyperbandPruner()``. Careful set-ups, as a user who read Optuna's
  docs would pick them: TPE + ``MedianPruner(n_warmup_steps=5)``, TPE and random +
  ``HyperbandPruner(min_resource=1)``, TPE + ``SuccessiveHalvingPruner(min_resource=1)``. Every
  contender runs the same seeds (seed s of a task seeds the sampler of every contender), and
  every study is named after its task, contender and seed (Hyperband's brackets hash it).
* Leave one task out (``--protocol loto``): every candidate default of
  ``strategies.CANDIDATES`` (TPE with 10 or 20 start-up trials; no pruner, or the median, ASHA
  or Hyperband pruner from 2% to 20% of the longest trial) runs beside the anchors. For each
  task, the candidate with the lowest mean regret on the five other tasks (seeds and budgets
  weighted alike) is scored on it: the held-out column. The in-sample table shows the candidate
  chosen on all six, which is what ``auto`` names. The held-out table is the one that counts.
* Every contender runs every trial its budget pays for, however slow its sampler: nothing is
  capped. One exact shortcut: without a pruner, once all rows left fit in the cost before the
  next budget, the picks no longer depend on the order, so the study takes the best of them
  without sampling (``replay(shortcut=False)`` gives the same numbers, slower).

Run it (from the repo root)::

    .venv/bin/python bench/replay.py                       # 6 tasks x 20 seeds, 2 processes
    .venv/bin/python bench/replay.py --seeds 3 --tasks 2 --budgets 100,300
    .venv/bin/python bench/replay.py --protocol loto --csv rows.csv   # 10 seeds, 30 and 100
    .venv/bin/python bench/replay.py --protocol loto --from-csv rows.csv  # its tables again

Exit status 0, or 2 when the table is missing or an option is wrong.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import optuna  # noqa: E402

from pretune.search import strategies  # noqa: E402

TABLE = REPO / ".." / "shared" / "data" / "hpo" / "taskset_imdb_rnn" / "valid_loss.csv"
PARAMS = ("learning_rate", "beta1", "beta2", "epsilon", "l1", "l2", "linear_decay",
          "exponential_decay")
BETAS = ("beta1", "beta2")
CHECKPOINTS = 51


# --- the table ------------------------------------------------------------------------------


@dataclass
class Task:
    name: str
    points: np.ndarray  # (rows, 8): normalized log coordinates in [0, 1]
    curves: np.ndarray  # (rows, 51): validation loss, NaN where the run diverged
    best: float  # lowest final loss of any row
    median: float  # median final loss of the rows whose curve is finite

    def regret(self, final_loss: float | None) -> float:
        if final_loss is None:
            return 1.0
        return (final_loss - self.best) / (self.median - self.best)


def normalized_points(rows: pd.DataFrame) -> np.ndarray:
    """Each parameter as log10(value) (log10(1 - value) for betas), scaled to [0, 1]."""
    cols = []
    for p in PARAMS:
        v = rows[p].to_numpy(dtype=float)
        x = np.log10(1.0 - v) if p in BETAS else np.log10(v)
        lo, hi = x.min(), x.max()
        cols.append((x - lo) / (hi - lo) if hi > lo else np.zeros_like(x))
    return np.stack(cols, axis=1)


def load_tasks(path: Path = TABLE) -> list[Task]:
    df = pd.read_csv(path)
    loss_cols = [f"valid_loss_{k}" for k in range(CHECKPOINTS)]
    tasks = []
    for name, rows in df.groupby("task", sort=True):
        rows = rows.sort_values("config_id")
        curves = rows[loss_cols].to_numpy(dtype=float)
        finite = ~np.isnan(curves).any(axis=1)
        final = curves[finite, -1]
        tasks.append(Task(name, normalized_points(rows), curves, float(final.min()),
                          float(np.median(final))))
    return tasks


class Mapper:
    """Maps a proposed point to the nearest row not evaluated yet; each row is used once."""

    def __init__(self, points: np.ndarray):
        self.points = points
        self.free = np.ones(len(points), dtype=bool)

    def __len__(self) -> int:
        return int(self.free.sum())

    def take(self, point: np.ndarray) -> int:
        d = ((self.points - point) ** 2).sum(axis=1)
        d[~self.free] = np.inf
        row = int(np.argmin(d))
        if not self.free[row]:
            raise IndexError("every row has been evaluated")
        self.free[row] = False
        return row


# --- one replayed study -----------------------------------------------------------------------


def _quiet(make: Callable):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return make()


# Careful anchors: Optuna as a user who read its docs sets it up. A pruner that waits for a few
# checkpoints (the median's n_warmup_steps) or starts its rungs at the first one
# (min_resource=1) instead of Optuna's bare defaults.
ANCHORS: dict[str, tuple[str, Callable[[], optuna.pruners.BasePruner]]] = {
    "tpe": ("tpe", optuna.pruners.NopPruner),
    "tpe+median": ("tpe", optuna.pruners.MedianPruner),
    "random": ("random", optuna.pruners.NopPruner),
    "random+hyperband": ("random", optuna.pruners.HyperbandPruner),
    "tpe+median5": ("tpe", lambda: optuna.pruners.MedianPruner(n_warmup_steps=5)),
    "tpe+hyperband1": ("tpe", lambda: optuna.pruners.HyperbandPruner(min_resource=1)),
    "random+hyperband1": ("random", lambda: optuna.pruners.HyperbandPruner(min_resource=1)),
    "tpe+sha1": ("tpe", lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1)),
}
CAREFUL = ("tpe+median5", "tpe+hyperband1", "random+hyperband1", "tpe+sha1")
CONTENDERS = ("pretune", "tpe", "tpe+median", "random", "random+hyperband", *CAREFUL)
KNOWN = ("pretune", *ANCHORS, *strategies.CANDIDATES)


def contender(name: str, seed: int) -> tuple[optuna.samplers.BaseSampler, optuna.pruners.BasePruner]:
    """Sampler and pruner of a contender. ``pretune`` is built by pretune's own factory, and so
    is every candidate default (``strategies.CANDIDATES``) the leave-one-task-out protocol
    chooses among."""
    if name == "pretune" or name in strategies.CANDIDATES:
        strategy = (strategies.resolve("auto") if name == "pretune"
                    else strategies.CANDIDATES[name])
        return strategies.build(strategy, seed, strategy.fidelity(CHECKPOINTS))
    kind, make_pruner = ANCHORS[name]
    sampler = (optuna.samplers.RandomSampler(seed=seed) if kind == "random"
               else optuna.samplers.TPESampler(seed=seed))
    return sampler, _quiet(make_pruner)


def row_costs(curves: np.ndarray) -> np.ndarray:
    """Checkpoints a row costs when it runs unpruned: up to its first NaN, else all 51."""
    nan = np.isnan(curves)
    return np.where(nan.any(axis=1), nan.argmax(axis=1) + 1, curves.shape[1])


def replay(task: Task, name: str, seed: int, budgets: list[int], *, shortcut: bool = True) -> dict:
    """Run one study of contender ``name`` on ``task``; regret at each budget (in curves).

    Without a pruner, once every row left fits in the cost before the next budget, whatever
    order the sampler would pick them in, the study's picks are known: the best complete row
    of all. The study then stops sampling and takes that (exact, and it spares the model-based
    samplers their slowest trials)."""
    sampler, pruner = contender(name, seed)
    unpruned = shortcut and isinstance(pruner, optuna.pruners.NopPruner)
    # Hyperband assigns brackets by a hash of the study name: name studies for repeatable runs.
    study = optuna.create_study(direction="minimize", sampler=sampler, pruner=pruner,
                                study_name=f"{task.name}-{name}-{seed}")
    mapper = Mapper(task.points)
    costs = row_costs(task.curves)
    finals = np.where(np.isnan(task.curves).any(axis=1), np.inf, task.curves[:, -1])
    limit = max(budgets) * CHECKPOINTS
    budgets = sorted(budgets)
    picks: dict[int, float | None] = {}
    cost, best, trials, pruned, failed = 0, None, 0, 0, 0
    while cost < limit and len(mapper):
        if unpruned and cost + costs[mapper.free].sum() <= budgets[0] * CHECKPOINTS:
            rest = float(finals[mapper.free].min())
            if math.isfinite(rest) and (best is None or rest < best):
                best = rest
            trials += len(mapper)
            failed += int(np.isinf(finals[mapper.free]).sum())
            cost += int(costs[mapper.free].sum())
            mapper.free[:] = False
            break
        trial = study.ask()
        point = np.array([trial.suggest_float(p, 0.0, 1.0) for p in PARAMS])
        curve = task.curves[mapper.take(point)]
        state, value, steps = optuna.trial.TrialState.COMPLETE, None, CHECKPOINTS
        for k, loss in enumerate(curve):
            if math.isnan(loss):
                state, steps = optuna.trial.TrialState.FAIL, k + 1
                break
            trial.report(float(loss), k + 1)
            if k + 1 < CHECKPOINTS and trial.should_prune():
                state, steps = optuna.trial.TrialState.PRUNED, k + 1
                break
        else:
            value = float(curve[-1])
        study.tell(trial, value, state=state)
        trials += 1
        pruned += state == optuna.trial.TrialState.PRUNED
        failed += state == optuna.trial.TrialState.FAIL
        # The pick at budget B is the best complete trial that finished within B.
        while budgets and cost + steps > budgets[0] * CHECKPOINTS:
            picks[budgets.pop(0)] = best
        cost += steps
        if value is not None and (best is None or value < best):
            best = value
        if not budgets:
            break
    for b in budgets:  # the table ran out (or the largest budget was met exactly)
        picks[b] = best
    return {"task": task.name, "contender": name, "seed": seed, "trials": trials,
            "pruned": pruned, "failed": failed, "cost_curves": cost / CHECKPOINTS,
            **{f"regret@{b}": task.regret(v) for b, v in picks.items()}}


# --- the comparison ---------------------------------------------------------------------------

_TASKS: list[Task] = []


def _init(path: str) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    _TASKS[:] = load_tasks(Path(path))


def _job(args: tuple[int, str, int, list[int]]) -> dict:
    t0 = time.perf_counter()
    index, name, seed, budgets = args
    row = replay(_TASKS[index], name, seed, budgets)
    row["seconds"] = time.perf_counter() - t0
    return row


def compare(*, seeds: int, task_count: int | None, budgets: list[int], contenders: list[str],
            processes: int, path: Path = TABLE, csv: Path | None = None) -> pd.DataFrame:
    """Every (task, seed, contender) study, ``processes`` at a time; with ``csv``, each row is
    appended there as it finishes (seed by seed, so a cut-short run still holds whole seeds)."""
    names = [t.name for t in load_tasks(path)][:task_count]
    jobs = [(i, c, s, budgets) for s in range(seeds) for i in range(len(names))
            for c in contenders]
    rows: list[dict] = []
    if csv is not None:
        csv.unlink(missing_ok=True)

    def keep(row: dict) -> None:
        rows.append(row)
        if csv is not None:
            pd.DataFrame([row]).to_csv(csv, mode="a", header=len(rows) == 1, index=False)
        print(f"\r{len(rows)}/{len(jobs)} studies", end="", file=sys.stderr, flush=True)

    if processes <= 1:
        _init(str(path))
        for job in jobs:
            keep(_job(job))
    else:
        with multiprocessing.get_context("fork").Pool(processes, _init, (str(path),)) as pool:
            for row in pool.imap_unordered(_job, jobs, chunksize=1):
                keep(row)
    print(file=sys.stderr)
    return pd.DataFrame(rows)


def short_task(name: str) -> str:
    return name.replace("FixedTextRNNClassification_imdb_", "")


def table(results: pd.DataFrame, budgets: list[int], contenders: list[str]) -> str:
    """Mean normalized regret per task and budget (rows) and contender (columns). The best
    mean of each row is starred, and so is every mean tied with it: above it by no more than
    the standard error of the difference, sqrt(se_best^2 + se^2)."""
    results = results[results.contender.isin(contenders)]
    lines = []
    header = f"{'task':<32} {'budget':>6} " + " ".join(f"{c:>17}" for c in contenders)
    lines.append(header)
    lines.append("-" * len(header))
    wins = {c: 0 for c in contenders}
    for task, rows in results.groupby("task", sort=True):
        for b in budgets:
            col = f"regret@{b}"
            stats = rows.groupby("contender")[col].agg(["mean", "sem"])
            stats["sem"] = stats["sem"].fillna(0.0)
            top = stats["mean"].idxmin()
            cells = []
            for c in contenders:
                m = stats.loc[c, "mean"]
                tied = m - stats.loc[top, "mean"] <= 1e-12 + math.hypot(stats.loc[top, "sem"],
                                                                 stats.loc[c, "sem"])
                star = "*" if tied else " "
                wins[c] += tied
                cells.append(f"{m:>8.4f}±{stats.loc[c, 'sem']:.4f}{star}")
            lines.append(f"{short_task(task):<32} {b:>6} " + " ".join(f"{x:>17}" for x in cells))
    lines.append("-" * len(header))
    mean = [f"{results[[f'regret@{b}' for b in budgets]][results.contender == c].to_numpy().mean():>17.4f}"
            for c in contenders]
    lines.append(f"{'mean over tasks and budgets':<39} " + " ".join(mean))
    lines.append(f"{'best or tied (*) in rows':<39} " + " ".join(f"{wins[c]:>17}" for c in contenders))
    return "\n".join(lines)


# --- leave one task out ------------------------------------------------------------------------

HELD_OUT = "pretune held out"


def choose(results: pd.DataFrame, budgets: list[int], candidates: list[str]) -> str:
    """The candidate default with the lowest mean regret over ``results`` (every task, seed and
    budget given equal weight); ties go to the one listed first."""
    cols = [f"regret@{b}" for b in budgets]
    rows = results[results.contender.isin(candidates)]
    means = rows.groupby("contender")[cols].mean().mean(axis=1)
    return min(candidates, key=lambda c: (means.get(c, math.inf), candidates.index(c)))


def leave_one_task_out(results: pd.DataFrame, budgets: list[int], candidates: list[str]
                       ) -> tuple[pd.DataFrame, dict[str, str]]:
    """For each task, the candidate chosen on the other tasks, scored on this one: its rows are
    added to ``results`` under the contender name ``HELD_OUT``. Returns them and the choice per
    task (what each fold picked)."""
    picks, held = {}, []
    for task in sorted(results.task.unique()):
        here = set(results.contender[results.task == task])
        pick = choose(results[results.task != task], budgets,
                      [c for c in candidates if c in here])
        picks[task] = pick
        rows = results[(results.task == task) & (results.contender == pick)].copy()
        rows["contender"] = HELD_OUT
        held.append(rows)
    return pd.concat([results, *held], ignore_index=True), picks


def loto_report(results: pd.DataFrame, budgets: list[int], anchors: list[str],
                candidates: list[str]) -> str:
    """The held-out table (the one that counts) and the in-sample one: the candidate chosen on
    all tasks, scored on the same tasks."""
    with_held, picks = leave_one_task_out(results, budgets, candidates)
    everywhere = choose(results, budgets, candidates)
    lines = ["Leave one task out: every constant of the default is chosen on the other tasks "
             "(lowest mean regret over their seeds and budgets) among "
             f"{len(candidates)} candidates, then scored on the task left out.",
             "chosen per fold: " + "; ".join(f"without {short_task(t)}: {p}"
                                           for t, p in picks.items()), "",
             "HELD OUT", table(with_held, budgets, [HELD_OUT, *anchors]), "",
             f"IN SAMPLE: {everywhere}, chosen on all {results.task.nunique()} tasks",
             table(results, budgets, [everywhere, *anchors]), "",
             "every candidate, mean regret over all tasks at " + " / ".join(map(str, budgets))
             + " curves, best first:"]
    cols = [f"regret@{b}" for b in budgets]
    means = results[results.contender.isin(candidates)].groupby("contender")[cols].mean()
    for name, row in means.assign(all=means.mean(axis=1)).sort_values("all").iterrows():
        lines.append(f"  {name:<24} " + " / ".join(f"{row[c]:.4f}" for c in cols)
                     + f"   (mean {row['all']:.4f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--protocol", choices=("compare", "loto"), default="compare",
                        help="compare: the contenders on every task; loto: leave one task out, "
                             "the default chosen among strategies.CANDIDATES on the other tasks")
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds per task (default 20; loto: 10)")
    parser.add_argument("--tasks", type=int, default=None, help="first N tasks (default all 6)")
    parser.add_argument("--budgets", default=None, help="budgets in full-curve equivalents, "
                        "comma-separated (default 30,100,300; loto: 30,100)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help="compare: who runs; loto: the anchors beside the held-out default")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--csv", type=Path, default=None,
                        help="also write every study's row here, as it finishes")
    parser.add_argument("--from-csv", type=Path, default=None,
                        help="print the tables of a --csv file instead of running")
    args = parser.parse_args(argv)
    loto = args.protocol == "loto"
    seeds = args.seeds or (10 if loto else 20)
    if not TABLE.is_file() and not args.from_csv:
        print(f"replay needs the table {TABLE.resolve()}; it is missing", file=sys.stderr)
        return 2
    try:
        budgets = sorted(int(b) for b in (args.budgets or ("30,100" if loto else "30,100,300"))
                         .split(","))
    except ValueError:
        print(f"--budgets must be whole numbers joined by commas, got {args.budgets!r}",
              file=sys.stderr)
        return 2
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    if loto:
        contenders = [c for c in contenders if c != "pretune"]
    unknown = [c for c in contenders if c not in KNOWN]
    if unknown or not budgets or min(budgets) < 1 or seeds < 1:
        print(f"contenders must be among {', '.join(KNOWN)}, budgets and seeds >= 1",
              file=sys.stderr)
        return 2
    candidates = list(strategies.CANDIDATES) if loto else []
    t0 = time.perf_counter()
    if args.from_csv:
        results = pd.read_csv(args.from_csv)
        counts = results.groupby(["task", "contender"]).size()
        contenders = [c for c in contenders if c in set(results.contender)]
        candidates = [c for c in candidates if c in set(results.contender)]
        seeds = f"{counts.min()}" if counts.min() == counts.max() else f"{counts.min()}-{counts.max()}"
    else:
        results = compare(seeds=seeds, task_count=args.tasks, budgets=budgets,
                          contenders=list(dict.fromkeys(contenders + candidates)),
                          processes=args.processes, csv=args.csv)
    wall = time.perf_counter() - t0
    auto = strategies.resolve("auto")
    print(f"pretune = strategy auto = {auto.about}, startup {auto.startup} trials, first "
          f"judgement at {auto.fidelity(CHECKPOINTS).min_resource} of {CHECKPOINTS} checkpoints")
    print(f"mean normalized regret over {seeds} seeds (± standard error); "
          f"0 = the table's best row, 1 = its median row;\n* = best of the row, or above it "
          f"by at most the standard error of the difference\n")
    if loto:
        print(loto_report(results, budgets, contenders, candidates))
    else:
        print(table(results, budgets, contenders))
    shown = contenders + candidates
    per = results.groupby("contender")[["trials", "pruned", "failed", "seconds"]].mean()
    print("\nper study, mean: " + "; ".join(
        f"{c}: {per.loc[c, 'trials']:.0f} trials ({per.loc[c, 'pruned']:.0f} pruned, "
        f"{per.loc[c, 'failed']:.0f} failed), {per.loc[c, 'seconds']:.1f}s" for c in shown))
    if not args.from_csv:
        print(f"wall time {wall:.0f}s with {args.processes} processes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
