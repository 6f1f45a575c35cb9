"""A BERT-large-sized model under an 8 GiB memory cap: pretune's search against the HF Trainer.

Protocol
--------
* Model: BERT-large's shape (24 layers, hidden 1024, 16 heads, feed-forward 4096; 335M
  parameters) built from a config with random weights and the MiniLM tokenizer (the same
  uncased vocabulary), saved once under ``--work-dir``.
* Data: ``--rows`` training rows and half as many validation rows sampled from SST-2's
  ``train.csv`` (distinct rows), texts cut at ``--max-length`` tokens.
* The cap: each side runs in its own child process, watched by this one, which reads the child's
  resident memory (``/proc/PID/statm``) every 50 ms and kills it once that passes ``--cap``
  (8 GiB). That is the kernel's OOM killer made reproducible without a cgroup (this machine has
  none that a user may set) and without ``RLIMIT_AS``, which torch's virtual reservations make
  fail long before the resident memory is near the cap. pretune is told the same cap through
  ``PRETUNE_MEMORY_LIMIT``: its memory plan fits each trial below it.
* pretune: a 3-trial search, batch size in {8, 16, 32, 64}, 1 epoch, fp32, without the
  learning-rate range test, the recipes from practice, the seed check or the final assembly
  (all of which would only add full-model trials), and ``checkpoint_soup=1`` (one CPU copy of
  the best weights, 1.3 GB here). The table prints each trial's estimated and measured peak.
* The HF Trainer: ``Trainer.train()`` at batch 64 on the same rows, fp32, two optimizer steps
  (``max_steps=2``, two passes over 64 rows), no saving. Two, because the first step runs before
  Adam holds any state: with one step (64 rows, one epoch) its activations never meet the
  optimizer's 2.5 GiB and the Trainer stays under the cap (6.4 GiB measured).

Run it (from the repo root)::

    .venv/bin/python bench/big_model.py            # about 10 minutes on 2 cores
    .venv/bin/python bench/big_model.py --quick    # fewer, shorter rows

Exit status: 0 when every pretune trial finished (completed, possibly adapted) and the search was
not killed; 1 otherwise; 2 when the data is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import REPO, check_data, data_files, print_table  # noqa: E402 - offline first

GIB = 2**30
BATCHES = [8, 16, 32, 64]
HF_STEPS = 2
LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
             intermediate_size=4096, max_position_embeddings=512, vocab_size=30522)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cap", default="8GiB", help="the memory cap of each side (default 8GiB)")
    p.add_argument("--rows", type=int, default=64, help="training rows (validation: half)")
    p.add_argument("--max-length", type=int, default=32, help="tokens per text")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="64 rows of 16 tokens")
    p.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "pretune-big-model"))
    p.add_argument("--sides", default="pretune,hf", help="which sides to run (default both)")
    p.add_argument("--only", choices=["build", "pretune", "hf"], help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.max_length = 64, 16
    return args


# --- the child processes --------------------------------------------------------------------------


def build(work: Path) -> Path:
    """BERT-large's shape with random weights and the MiniLM tokenizer, saved once."""
    model_dir = work / "bert-large-random"
    if (model_dir / "model.safetensors").is_file():
        return model_dir
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from common import model_dir as minilm

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**LARGE, num_labels=2))
    print(f"built {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters", flush=True)
    model.save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(minilm()).save_pretrained(model_dir)
    return model_dir


def data(work: Path, rows: int) -> tuple[Path, Path]:
    import pandas as pd

    df = pd.read_csv(data_files()["train"]).drop_duplicates("text")
    picked = df.sample(rows + rows // 2, random_state=0)
    train, valid = work / f"train-{rows}.csv", work / f"valid-{rows}.csv"
    picked.iloc[:rows].to_csv(train, index=False)
    picked.iloc[rows:].to_csv(valid, index=False)
    return train, valid


def run_pretune(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import optuna

    import pretune

    train, valid = data(work, args.rows)
    out = work / f"run-{args.rows}-{args.max_length}"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    space = {"extend": False, "batch_size": {"choices": BATCHES},
             "lr": {"low": 1e-5, "high": 1e-4, "log": True}}
    plans: list[str] = []
    started = time.perf_counter()
    pretune.tune(model=str(build(work)), train=str(train), valid=str(valid), out=out,
                 budget="3trials", space=space, fixed={"epochs": 1}, pruner="none",
                 precision="fp32", priors=False, lr_range_test=False, seed_check=0,
                 assemble=False, evals_per_epoch=1, max_length=args.max_length,
                 checkpoint_soup=1, threads=args.threads, feature_cache=False,
                 on_plan=lambda plan: plans.append(plan.message()))
    study = optuna.load_study(study_name="pretune", storage=f"sqlite:///{out / 'study.db'}")
    trials = [{"number": t.number, "state": t.state.name, "batch_size": t.params.get("batch_size"),
               "memory": t.user_attrs.get("memory"), "retry": t.user_attrs.get("memory_retry"),
               "refused": t.user_attrs.get("memory_refused"), "value": t.value}
              for t in study.trials]
    return {"plan": plans[0] if plans else None, "trials": trials,
            "seconds": round(time.perf_counter() - started, 1)}


def run_hf(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, Trainer,
                              TrainingArguments)

    torch.set_num_threads(args.threads)
    train, _ = data(work, args.rows)
    import pandas as pd

    model_dir = build(work)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    frame = pd.read_csv(train)
    enc = tokenizer(list(frame["text"]), truncation=True, max_length=args.max_length,
                    padding="max_length")
    ds = Dataset.from_dict({**enc, "labels": np.asarray(frame["label"], dtype=np.int64)})
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    # Two steps: the first runs before Adam has any state, so its activations never meet it.
    targs = TrainingArguments(output_dir=str(work / "hf-out"), per_device_train_batch_size=64,
                              max_steps=HF_STEPS, use_cpu=True, report_to=[],
                              save_strategy="no", eval_strategy="no", logging_strategy="no",
                              dataloader_num_workers=0, seed=0)
    started = time.perf_counter()
    Trainer(model=model, args=targs, train_dataset=ds).train()
    return {"seconds": round(time.perf_counter() - started, 1)}


# --- the watched runs -------------------------------------------------------------------------


def rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def watched(only: str, args: argparse.Namespace, cap: int) -> dict[str, Any]:
    """This script with ``--only only`` in a child, killed once its resident memory passes
    ``cap``: ``{"outcome": finished | killed | failed, "max_rss": bytes, ...}``."""
    out = Path(args.work_dir) / f"{only}.json"
    out.unlink(missing_ok=True)
    argv = [sys.executable, __file__, "--only", only, "--json", str(out), "--work-dir",
            args.work_dir, "--rows", str(args.rows), "--max-length", str(args.max_length),
            "--threads", str(args.threads)]
    env = {**os.environ, "PRETUNE_MEMORY_LIMIT": str(cap), "OMP_NUM_THREADS": str(args.threads)}
    child = subprocess.Popen(argv, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    most, killed_at = 0, None
    started = time.monotonic()
    while child.poll() is None:
        now = rss(child.pid)
        most = max(most, now)
        if now > cap:
            killed_at = now
            child.send_signal(signal.SIGKILL)
            child.wait()
            break
        time.sleep(0.05)
    err = child.stderr.read() if child.stderr else ""
    result: dict[str, Any] = {"max_rss": most, "seconds": round(time.monotonic() - started, 1)}
    if killed_at is not None:
        result["outcome"] = "killed"
        result["why"] = f"resident memory {killed_at / GIB:.2f} GiB passed the cap"
    elif child.returncode != 0 or not out.is_file():
        lines = [x for x in err.strip().splitlines() if x.strip()]
        result["outcome"] = "failed"
        result["why"] = lines[-1] if lines else f"exit status {child.returncode}"
    else:
        result.update(json.loads(out.read_text()), outcome="finished")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    if args.only:
        done = {"build": lambda: {"model": str(build(work))},
                "pretune": lambda: run_pretune(args, work),
                "hf": lambda: run_hf(args, work)}[args.only]()
        Path(args.json).write_text(json.dumps(done, default=str))
        return 0
    check_data()
    from pretune.training.memory import parse_size

    cap = parse_size(args.cap)
    built = watched("build", args, 4 * cap)
    if built["outcome"] != "finished":
        print(f"could not build the model: {built.get('why')}", file=sys.stderr)
        return 1
    print(f"{args.rows} rows of {args.max_length} tokens, cap {cap / GIB:.1f} GiB of resident "
          f"memory per side (killed past it)")
    sides = args.sides.split(",")
    ok = True
    if "pretune" in sides:
        side = watched("pretune", args, cap)
        report_pretune(side, cap)
        trials = side.get("trials") or []
        ok = (side["outcome"] == "finished" and len(trials) == 3
              and all(t["state"] == "COMPLETE" for t in trials))
    if "hf" in sides:
        hf = watched("hf", args, cap)
        print(f"\nHF Trainer at batch 64, {HF_STEPS} steps: {hf['outcome']} after "
              f"{hf['seconds']}s ({hf.get('why', 'trained')}; highest resident memory "
              f"{hf['max_rss'] / GIB:.2f} GiB)")
    return 0 if ok else 1


def report_pretune(side: dict[str, Any], cap: int) -> None:
    print(f"\npretune: {side['outcome']} after {side['seconds']}s, highest resident memory "
          f"{side['max_rss'] / GIB:.2f} GiB" + (f" ({side['why']})" if "why" in side else ""))
    if side.get("plan"):
        print(f"plan: ...{side['plan'][side['plan'].find('Memory:'):]}")
    rows = []
    for t in side.get("trials") or []:
        m = t["memory"] or {}
        how = (f"{m.get('micro_batch')} x {m.get('grad_accum')}"
               + (" + checkpointing" if m.get("checkpointing") else "")) if m else ""
        rows.append([t["number"], t["state"], t["batch_size"], how,
                     m.get("estimate_mb", ""), m.get("peak_mb", ""), m.get("ratio", ""),
                     "retried" if t["retry"] else ("refused" if t["refused"] else
                                                   ("adapted" if m.get("adapted") else "as set"))])
    if rows:
        print_table(["trial", "state", "batch", "micro x accum", "estimate MB", "peak MB",
                     "estimate/peak", "memory"], rows)


if __name__ == "__main__":
    sys.exit(main())
