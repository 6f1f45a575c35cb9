"""How fast a trial runs: pretune against a plain PyTorch loop and the HF Trainer, and its caches.

Everything runs in this process, one measurement after the other, on the packaged
all-MiniLM-L6-v2 and 2,000 SST-2 training rows (``df.sample(2000, random_state=0)``), validated
on ``validation.csv`` (872 rows). Each line compares two measurements taken side by side, so the
ratios hold on a noisy shared machine better than the times do; ``--repeats N`` (default 2) runs
each pair N times, flipping the order each round, and keeps each side's fastest.

1. **Loop overhead**: ``pretune.training.loop.train`` against a hand-written PyTorch loop with the
   same model, the same batches (pretune's length-bucketed dynamic padding), AdamW with the same
   learning rate (torch's default AdamW, on a CPU a loop over the parameters; pretune's is
   fused) and linear warmup/decay, clipping at 1.0, bf16 autocast where the CPU has it,
   and one evaluation per epoch; 1 epoch. Ratio: plain time / pretune time (>= 0.95 means
   pretune's bookkeeping costs under 5%).
2. **Default trial against the HF Trainer**: ``pretune.training.run.fit`` with pretune's default
   settings (precision auto, batch 32, lr 5e-5, length-bucketed batches, an evaluation each
   epoch), from model loading to the trained model, against the Trainer set up as the
   transformers text-classification guide does (tokenize with ``truncation=True``,
   ``DataCollatorWithPadding``, lr 2e-5, batch 16, weight decay 0.01, ``eval_strategy="epoch"``,
   ``save_strategy="epoch"``, ``load_best_model_at_end=True``, default precision: fp32 on a CPU),
   same number of epochs (2). Examples per second = training rows x epochs / wall seconds.
   Validation accuracy of each is printed beside it.
3. **Precision**: the default trial in fp32 against bf16 (time and validation accuracy).
4. **Feature cache**: a linear-probe trial (3 epochs) with the frozen-feature cache warm (a
   previous trial computed the features) against one without the cache.
5. **Data preparation**: the second trial's tokenization and max-length measurement against the
   first's, with one cache shared by both (as in a search).
6. **Against the machine's limit**: for every pretune trial measured above (or the default trial
   alone, when 2 is not run), the real and padded tokens it processed (``pretune.training.timing``
   counts the batches), the model FLOPs they cost (``pretune.training.flops``: training steps
   three forward passes, evaluations one), and model FLOPs utilization against a 2048 x 2048
   matmul of the trial's precision timed in the same process on the same threads; then the share
   of each phase (data, forward, backward, optimizer, evaluation, other) in its seconds, and the
   line ``MFU of the default trial: NN%``.

Opt-in (``--only 7``, ``--only 8``, ``--only 9``), the measurements behind the loop's speed
choices:

7. **Candidate speed-ups**: one AdamW step over MiniLM's parameters as a per-parameter loop,
   ``foreach`` and fused; an evaluation pass under ``no_grad`` and ``inference_mode`` at eval
   batch 128 and 512; pretune's loop (as in 1.) with the fused AdamW and without.
8. **torch.compile** on the CPU: 12 training steps on length-bucketed batches, eager and
   compiled: the compiled first pass (compilation included), its graphs, and the warm step.
9. **pretune.training.cpu_speed**: the default trial (as in 2.) with both of its changes (freed
   memory kept mapped, dropout masks from numpy's bit generator), each alone and neither, the
   order reversed every other round; each side's fastest and its validation accuracy.

Run it (from the repo root; ``PYTHONPATH=.`` so that this checkout's pretune is imported)::

    PYTHONPATH=. .venv/bin/python bench/throughput.py                          # ~15 minutes on 2 cores
    PYTHONPATH=. .venv/bin/python bench/throughput.py --rows 500 --repeats 1   # a quick look
    PYTHONPATH=. .venv/bin/python bench/throughput.py --only 6 --rows 300      # MFU of the default trial

Exit status 0, or 2 when the data is missing or an option is wrong.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from common import (  # noqa: E402 - bench/common.py sets the offline switches first
    check_data, data_files, model_dir, print_table, train_sample)

PHASES = ("data", "forward", "backward", "optimizer", "evaluation")  # pretune.training.timing's

HF_EPOCHS = 2  # the text-classification guide's
LOOP_EPOCHS = 1
PROBE_EPOCHS = 3


def quiet() -> None:
    import warnings

    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def config(train_csv: Path, **settings: Any):
    from pretune.api import build_config

    base = dict(model=model_dir(), train=str(train_csv), valid=str(data_files()["validation"]),
                patience=None)
    base.update(settings)
    return build_config(None, base)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    import gc

    gc.collect()
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def best_of(repeats: int, *sides: Callable[[], Any]) -> list[tuple[float, Any]]:
    """Each side's fastest (seconds, value) over ``repeats`` rounds. The order of the sides flips
    each round, so one-time costs (kernel compilation for new shapes, cold files) that the side
    running first pays do not stay on one side with 2 or more rounds."""
    best: list[tuple[float, Any] | None] = [None] * len(sides)
    for round_ in range(repeats):
        order = range(len(sides)) if round_ % 2 == 0 else reversed(range(len(sides)))
        for i in order:
            got = timed(sides[i])
            if best[i] is None or got[0] < best[i][0]:  # type: ignore[index]
                best[i] = got
    return best  # type: ignore[return-value]


# --- 1. the loop against a plain one ----------------------------------------------------------


def loop_pair(train_csv: Path, threads: int):
    """Two callables training the same model on the same batches: pretune's loop, a plain one."""
    import torch

    from pretune.config import TrainConfig
    from pretune.data.collate import Batches
    from pretune.data.task import load_task
    from pretune.models import build_model
    from pretune.training.caches import RunCaches
    from pretune.training.device import autocast, resolve_precision
    from pretune.training import timing
    from pretune.training.loop import evaluate_model, train

    cfg = config(train_csv, epochs=LOOP_EPOCHS, threads=threads)
    task = load_task(cfg.data, 0)
    caches = RunCaches()
    _, tokenizer, _ = build_model(cfg.model, 2, task.label_names)
    max_length = caches.tokens.max_length(task.train, tokenizer, cap=512)
    train_enc = caches.tokens.encode(task.train, tokenizer, max_length)
    valid_enc = caches.tokens.encode(task.valid, tokenizer, max_length)
    t = cfg.train
    device = torch.device("cpu")
    precision = resolve_precision(t.precision, device)
    settings = TrainConfig(**{**t.__dict__, "evals_per_epoch": 1, "precision": precision})

    def batches():
        return (Batches(train_enc, t.batch_size, pad_id=0, shuffle=True, seed=t.seed),
                Batches(valid_enc, t.eval_batch_size, pad_id=0, shuffle=False))

    def fresh_model():
        torch.manual_seed(0)
        return build_model(cfg.model, 2, task.label_names)[0]

    def pretune_side():
        torch.set_num_threads(threads)
        model = fresh_model()
        tb, vb = batches()
        with timing.measure() as clock:
            accuracy = train(model, tb, vb, settings).best_metrics["accuracy"]
        return {"accuracy": accuracy, "precision": precision, "clock": clock}

    def plain_side():
        torch.set_num_threads(threads)
        model = fresh_model()
        tb, vb = batches()
        optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        total = math.ceil(len(tb) * LOOP_EPOCHS)
        warmup = int(t.warmup_ratio * total)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: s / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
        accuracy = 0.0
        for epoch in range(LOOP_EPOCHS):
            model.train()
            tb.set_epoch(epoch)
            for batch in tb:
                batch.pop("index")
                labels = batch.pop("labels")
                with autocast(precision, device):
                    logits = model(**batch).logits
                loss = torch.nn.functional.cross_entropy(logits.float(), labels)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
            accuracy = evaluate_model(model, vb, precision=precision, device=device)["accuracy"]
        return accuracy

    return pretune_side, plain_side, len(task.train) * LOOP_EPOCHS, precision


# --- 2. a default trial against the HF Trainer ---------------------------------------------------


def pretune_trial(train_csv: Path, threads: int, **settings: Any) -> Callable[[], dict]:
    def run():
        from pretune.training import timing
        from pretune.training.caches import RunCaches
        from pretune.training.run import fit

        with timing.measure() as clock:
            result = fit(config(train_csv, threads=threads, **settings), caches=RunCaches())
        return {"accuracy": result.metrics["accuracy"], "precision": result.train_result.precision,
                "timings": result.timings, "clock": clock}
    return run


def hf_trial(train_csv: Path, threads: int, work: Path) -> Callable[[], dict]:
    def run():
        import numpy as np
        import pandas as pd
        import torch
        from datasets import Dataset
        from transformers import (
            AutoModelForSequenceClassification,
            AutoTokenizer,
            DataCollatorWithPadding,
            PrinterCallback,
            Trainer,
            TrainingArguments,
        )

        torch.set_num_threads(threads)
        out = work / "hf"
        shutil.rmtree(out, ignore_errors=True)
        tokenizer = AutoTokenizer.from_pretrained(model_dir())

        def dataset(path: Path) -> Dataset:
            frame = pd.read_csv(path)[["text", "label"]]
            return Dataset.from_pandas(frame, preserve_index=False).map(
                lambda b: tokenizer(b["text"], truncation=True), batched=True)

        def accuracy(eval_pred):
            logits, labels = eval_pred
            return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}

        model = AutoModelForSequenceClassification.from_pretrained(model_dir(), num_labels=2)
        args = TrainingArguments(
            output_dir=str(out), learning_rate=2e-5, per_device_train_batch_size=16,
            per_device_eval_batch_size=16, num_train_epochs=HF_EPOCHS, weight_decay=0.01,
            eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True,
            report_to=[], disable_tqdm=True, use_cpu=True,
        )
        trainer = Trainer(model=model, args=args, train_dataset=dataset(train_csv),
                          eval_dataset=dataset(data_files()["validation"]),
                          processing_class=tokenizer,
                          data_collator=DataCollatorWithPadding(tokenizer=tokenizer),
                          compute_metrics=accuracy)
        trainer.remove_callback(PrinterCallback)  # its log lines, not its work
        trainer.train()
        result = {"accuracy": trainer.evaluate()["eval_accuracy"], "precision": "fp32"}
        shutil.rmtree(out, ignore_errors=True)
        return result
    return run


# --- 4. and 5. the caches ---------------------------------------------------------------------------


def probe_pair(train_csv: Path, threads: int):
    """A linear-probe trial without the feature cache, and one with it warm."""
    from pretune.training.caches import RunCaches
    from pretune.training.run import fit

    warm = RunCaches()
    cfg = dict(transfer="linear_probe", epochs=PROBE_EPOCHS, lr=1e-3, threads=threads)
    fit(config(train_csv, **cfg), caches=warm)  # computes the features once

    def cold():
        return fit(config(train_csv, feature_cache=False, **cfg), caches=RunCaches()).metrics["accuracy"]

    def cached():
        return fit(config(train_csv, **cfg), caches=warm).metrics["accuracy"]

    return cold, cached


def data_prep(train_csv: Path, threads: int) -> tuple[float, float]:
    """Seconds of data preparation of a first and a second trial sharing one cache."""
    from pretune.training.caches import RunCaches
    from pretune.training.run import fit

    caches = RunCaches()
    seconds = []
    for lr in (5e-5, 3e-5):
        result = fit(config(train_csv, epochs=0.05, lr=lr, threads=threads), caches=caches)
        seconds.append(result.timings["data"])
    return seconds[0], seconds[1]


# --- 6. against the machine's limit -------------------------------------------------------------

DEFAULT_TRIAL = "default trial (fit, 2 epochs)"
MATMUL_SIZE = 2048


def matmul_rates(threads: int, repeats: int = 5) -> dict[str, float]:
    """FLOP/s of a 2048 x 2048 matrix product in bf16 and fp32 on ``threads`` threads, the
    fastest of ``repeats`` (the machine's practical limit for the model's products)."""
    import torch

    torch.set_num_threads(threads)
    rates = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a, b = (torch.randn(MATMUL_SIZE, MATMUL_SIZE).to(dtype) for _ in range(2))
        a @ b  # the first call picks and prepares the kernel
        best = math.inf
        for _ in range(repeats):
            started = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - started)
        rates[name] = 2 * MATMUL_SIZE ** 3 / best
    return rates


def work_of(clock, model_config) -> dict[str, float]:
    """Tokens and model FLOPs of the batches a clock saw: training steps (three forward passes'
    worth) and evaluations (one), counted on the real tokens (each row at its batch's mean
    length) and on the padded ones (what the model computed)."""
    from pretune.training.flops import forward_flops

    out = dict(real_tokens=0.0, padded_tokens=0.0, real_flops=0.0, padded_flops=0.0)
    for split, passes in (("train", 3.0), ("eval", 1.0)):
        for b in clock.batches[split]:
            real = passes * forward_flops(model_config, b.rows, b.tokens / b.rows)
            out["real_tokens"] += b.tokens
            out["padded_tokens"] += b.padded
            out["real_flops"] += real
            out["padded_flops"] += passes * forward_flops(model_config, b.rows, b.length)
            out[f"{split}_tokens"] = out.get(f"{split}_tokens", 0.0) + b.tokens
            out[f"{split}_flops"] = out.get(f"{split}_flops", 0.0) + real
    return out


def limit_report(measured: list[tuple[str, float, dict]], rates: dict[str, float],
                 threads: int) -> None:
    """Tokens, FLOPs and MFU of each measured trial, where its time went, and the closing line."""
    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(model_dir(), num_labels=2)
    print(f"\nmatmul limit ({MATMUL_SIZE}x{MATMUL_SIZE}, {threads} threads): "
          + ", ".join(f"{k} {v / 1e12:.2f} TFLOP/s" for k, v in rates.items()))
    table, shares, default_mfu = [], [], None
    for name, seconds, value in measured:
        clock, precision = value["clock"], value["precision"]
        work = work_of(clock, model_config)
        limit = rates.get(precision, rates["fp32"])
        mfu = work["real_flops"] / seconds / limit
        table.append((name, precision, f"{seconds:.1f}", f"{work['real_tokens']:.0f}",
                      f"{work['padded_tokens']:.0f}",
                      f"{work.get('train_flops', 0) / max(work.get('train_tokens', 0), 1) / 1e6:.1f}",
                      f"{work['real_flops'] / seconds / 1e12:.3f}", f"{100 * mfu:.1f}%",
                      f"{100 * work['padded_flops'] / seconds / limit:.1f}%"))
        timings = value.get("timings") or {}
        setup = sum(v for k, v in timings.items() if k != "train")
        other = max(seconds - clock.total() - setup, 0.0)
        shares.append((name, *(f"{100 * clock.seconds.get(p, 0.0) / seconds:.0f}%"
                               for p in PHASES), f"{100 * setup / seconds:.0f}%",
                       f"{100 * other / seconds:.0f}%"))
        if name == DEFAULT_TRIAL:
            default_mfu = mfu
    print("model FLOPs utilization: model FLOPs of the real tokens (train steps + evaluations) per "
          "second of the whole measurement, against the matmul rate of its precision; 'padded' "
          "counts the padding the model computed too")
    print_table(("trial", "precision", "s", "real tokens", "padded tokens", "MFLOP/train token",
                 "TFLOP/s", "MFU", "MFU padded"), table)
    print("\nwhere the time goes (share of each measurement's seconds; evaluation includes the "
          "checkpoint soup's; setup = model loading and data preparation of fit; other = "
          "checkpoint copies, saving, bookkeeping)")
    print_table(("trial", *PHASES, "setup", "other"), shares)
    if default_mfu is not None:
        print(f"\nMFU of the default trial: {100 * default_mfu:.0f}%")


# --- 7. candidate speed-ups, each side by side with what it replaces ------------------------------


def alternate(rounds: int, sides: dict[str, Callable[[], Any]]) -> dict[str, float]:
    """Each side's fastest seconds over ``rounds`` rounds, the order reversed every other round."""
    best = {name: math.inf for name in sides}
    for round_ in range(rounds):
        names = list(sides) if round_ % 2 == 0 else list(reversed(list(sides)))
        for name in names:
            seconds, _ = timed(sides[name])
            best[name] = min(best[name], seconds)
    return best


def optimizer_candidates(threads: int, rounds: int) -> dict[str, float]:
    """Seconds of one AdamW step over all of MiniLM's parameters: torch's CPU default (a loop
    over the parameters), its multi-tensor ``foreach`` form, and the fused kernel."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(threads)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir(), num_labels=2)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    kinds = {"per-parameter loop": dict(foreach=False), "foreach": dict(foreach=True),
             "fused": dict(fused=True)}
    sides = {}
    for name, kw in kinds.items():
        optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01, **kw)
        optimizer.step()  # creates its state
        sides[name] = optimizer.step
    return alternate(rounds, sides)


def eval_candidates(train_csv: Path, threads: int, rounds: int) -> dict[str, float]:
    """Seconds of one pass over the 872 validation rows (bf16 autocast where the CPU has it):
    ``torch.no_grad`` against ``torch.inference_mode``, at eval batch 128 (the default) and 512."""
    import torch

    from pretune.data.collate import Batches
    from pretune.data.task import load_task
    from pretune.models import build_model
    from pretune.training.caches import RunCaches
    from pretune.training.device import autocast, resolve_precision

    torch.set_num_threads(threads)
    cfg = config(train_csv, threads=threads)
    task = load_task(cfg.data, 0)
    model, tokenizer, _ = build_model(cfg.model, 2, task.label_names)
    model.eval()
    enc = RunCaches().tokens.encode(task.valid, tokenizer, 128)
    device, precision = torch.device("cpu"), resolve_precision("auto", torch.device("cpu"))

    def side(mode, size):
        def run():
            with mode():
                for batch in Batches(enc, size, pad_id=0, shuffle=False):
                    batch = {k: v for k, v in batch.items() if k not in ("index", "labels")}
                    with autocast(precision, device):
                        model(**batch).logits.float().softmax(-1)
        return run

    return alternate(rounds, {f"{m.__name__}, batch {b}": side(m, b)
                              for m in (torch.no_grad, torch.inference_mode) for b in (128, 512)})


def fused_trial_pair(train_csv: Path, threads: int):
    """pretune's loop (as in 1.) with the fused AdamW update and with torch's default one."""
    from pretune.training import optimizers

    pretune_side, _, n, _ = loop_pair(train_csv, threads)

    def with_fused(on: bool):
        def run():
            optimizers.FUSED = on
            try:
                return pretune_side()
            finally:
                optimizers.FUSED = True
        return run

    return with_fused(True), with_fused(False), n


def candidates_report(train_csv: Path, threads: int, rounds: int) -> None:
    print("7. candidate speed-ups, side by side", flush=True)
    for title, got in (("AdamW step over MiniLM's 22.7M parameters",
                        optimizer_candidates(threads, rounds)),
                       ("evaluation pass over 872 validation rows",
                        eval_candidates(train_csv, threads, rounds))):
        first = next(iter(got.values()))
        print(f"  {title} (fastest of {rounds} rounds):")
        for name, seconds in got.items():
            print(f"    {name:<24} {seconds * 1000:8.0f} ms   {first / seconds:.2f}x")
    fused, unfused, n = fused_trial_pair(train_csv, threads)
    a, b = best_of(rounds, fused, unfused)
    print(f"  pretune loop, 1 epoch: fused AdamW {a[0]:.1f}s ({n / a[0]:.0f} ex/s, valid acc "
          f"{a[1]['accuracy']:.3f}) vs per-parameter {b[0]:.1f}s ({n / b[0]:.0f} ex/s, valid acc "
          f"{b[1]['accuracy']:.3f}): {b[0] / a[0]:.2f}x", flush=True)


def cpu_speed_sides(train_csv: Path, threads: int) -> dict[str, Callable[[], dict]]:
    """The default trial with both of ``pretune.training.cpu_speed``'s changes, with each one
    off, and with both off."""
    from pretune.training import cpu_speed

    def side(memory: bool, dropout: bool):
        trial = pretune_trial(train_csv, threads, epochs=HF_EPOCHS)

        def run():
            cpu_speed.REUSE_FREED_MEMORY, cpu_speed.FAST_DROPOUT = memory, dropout
            try:
                return trial()
            finally:
                cpu_speed.REUSE_FREED_MEMORY = cpu_speed.FAST_DROPOUT = True
        return run

    return {"both (default)": side(True, True), "freed memory kept only": side(True, False),
            "fast dropout only": side(False, True), "neither": side(False, False)}


def cpu_speed_report(train_csv: Path, threads: int, rows: int, rounds: int) -> None:
    print("9. the default trial with and without pretune.training.cpu_speed", flush=True)
    sides = cpu_speed_sides(train_csv, threads)
    best = dict(zip(sides, best_of(rounds, *sides.values())))
    neither = best["neither"][0]
    print(f"  fastest of {rounds} rounds, {rows} rows x {HF_EPOCHS} epochs:")
    for name, (seconds, value) in best.items():
        print(f"    {name:<24} {seconds:6.1f}s {rows * HF_EPOCHS / seconds:5.0f} ex/s "
              f"{neither / seconds:.2f}x  valid acc {value['accuracy']:.4f}", flush=True)


def compile_candidate(train_csv: Path, threads: int, steps: int = 12) -> dict[str, float]:
    """``torch.compile`` on the CPU: training steps of MiniLM on pretune's length-bucketed batches
    (batch 32, bf16 where the CPU has it) eager and compiled. Returns the compiled side's first
    pass (compilation included), the recompilations it made for new batch widths, and the
    median step of each side once warm."""
    import statistics

    import torch
    import torch._dynamo

    from pretune.data.collate import Batches
    from pretune.data.task import load_task
    from pretune.models import build_model
    from pretune.training.caches import RunCaches
    from pretune.training.device import autocast, resolve_precision

    torch.set_num_threads(threads)
    cfg = config(train_csv, threads=threads)
    task = load_task(cfg.data, 0)
    model, tokenizer, _ = build_model(cfg.model, 2, task.label_names)
    enc = RunCaches().tokens.encode(task.train, tokenizer, 128)
    batches = [b for _, b in zip(range(steps), Batches(enc, 32, pad_id=0, shuffle=True, seed=0))]
    device = torch.device("cpu")
    precision = resolve_precision("auto", device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

    def step(forward, batch):
        inputs = {k: v for k, v in batch.items() if k not in ("index", "labels")}
        with autocast(precision, device):
            logits = forward(**inputs).logits
        torch.nn.functional.cross_entropy(logits.float(), batch["labels"]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def run(forward) -> list[float]:
        seconds = []
        for batch in batches:
            started = time.perf_counter()
            step(forward, batch)
            seconds.append(time.perf_counter() - started)
        return seconds

    model.train()
    eager = run(model)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled_model = torch.compile(model)
    first = run(compiled_model)
    recompiles = sum(torch._dynamo.utils.counters["stats"].get(k, 0)
                     for k in ("unique_graphs",))
    warm = run(compiled_model)
    eager_again = run(model)
    return {"widths": len({b["input_ids"].shape[1] for b in batches}),
            "first_pass_s": sum(first), "graphs": recompiles,
            "eager_step_s": statistics.median(eager + eager_again),
            "compiled_step_s": statistics.median(warm)}


def pretune_measurements(args, train_csv: Path, work: Path,
                         line: Callable) -> list[tuple[str, float, dict]]:
    """Measurements 1 to 3 (and 6 alone, without 2): each pair's line, and each pretune side as
    (name, seconds, value with its phase clock) for the report against the machine's limit."""
    measured: list[tuple[str, float, dict]] = []
    if "1" in args.only:
        print("1. pretune's loop against a plain PyTorch loop", flush=True)
        pretune_side, plain_side, n, precision = loop_pair(train_csv, args.threads)
        a, b = best_of(args.repeats, pretune_side, plain_side)
        line(f"loop: pretune vs plain PyTorch ({precision})", a, b, n,
             f"valid acc {a[1]['accuracy']:.3f} vs {b[1]:.3f}")
        measured.append(("pretune loop, 1 epoch", *a))

    if "2" in args.only:
        print("2. pretune's default trial against the HF Trainer (text-classification guide)",
              flush=True)
        a, b = best_of(args.repeats, pretune_trial(train_csv, args.threads, epochs=HF_EPOCHS),
                       hf_trial(train_csv, args.threads, work))
        line(f"trial: pretune default ({a[1]['precision']}) vs HF Trainer (fp32)", a, b,
             args.rows * HF_EPOCHS, f"valid acc {a[1]['accuracy']:.4f} vs {b[1]['accuracy']:.4f}")
        measured.append((DEFAULT_TRIAL, *a))

    if "3" in args.only:
        print("3. precision: pretune's default trial in bf16 against fp32", flush=True)
        a, b = best_of(args.repeats,
                       pretune_trial(train_csv, args.threads, epochs=HF_EPOCHS, precision="bf16"),
                       pretune_trial(train_csv, args.threads, epochs=HF_EPOCHS, precision="fp32"))
        line("trial: bf16 vs fp32", a, b, args.rows * HF_EPOCHS,
             f"valid acc {a[1]['accuracy']:.4f} vs {b[1]['accuracy']:.4f}")
        measured += [("trial, bf16", *a), ("trial, fp32", *b)]

    if "6" in args.only and not any(m[0] == DEFAULT_TRIAL for m in measured):
        print("6. pretune's default trial alone, measured against the machine's limit", flush=True)
        (got,) = best_of(args.repeats, pretune_trial(train_csv, args.threads, epochs=HF_EPOCHS))
        measured.append((DEFAULT_TRIAL, *got))
    return measured


def compile_report(train_csv: Path, threads: int) -> None:
    print("8. torch.compile on the CPU", flush=True)
    got = compile_candidate(train_csv, threads)
    print(f"  {got['widths']} batch widths in 12 steps: compiled first pass "
          f"{got['first_pass_s']:.0f}s with {got['graphs']} graphs; warm step "
          f"{got['compiled_step_s'] * 1000:.0f} ms compiled vs {got['eager_step_s'] * 1000:.0f} "
          f"ms eager ({got['eager_step_s'] / got['compiled_step_s']:.2f}x)", flush=True)


# --- driving -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Trial speed: pretune against a plain loop and "
                                                 "the HF Trainer, and its caches.")
    parser.add_argument("--rows", type=int, default=2000, help="training rows (default 2000)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="rounds of each timed pair, the order flipped each round; each "
                             "side's fastest is kept (default 2)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads (default: all cores)")
    parser.add_argument("--only", default="123456",
                        help="which measurements to run, by number (default 123456; 7, 8 and "
                             "9 only when named)")
    args = parser.parse_args(argv)
    if args.rows < 100 or args.repeats < 1 or args.threads < 1:
        parser.error("--rows must be at least 100, --repeats and --threads at least 1")
    check_data()
    quiet()
    import platform

    import torch

    from pretune.training.device import cpu_has_bf16

    work = Path(tempfile.mkdtemp(prefix="throughput-"))
    train_csv = train_sample(work, args.rows)
    rows: list[tuple] = []

    def line(name: str, a: tuple[float, Any], b: tuple[float, Any], n: int, note: str = "") -> None:
        rows.append((name, f"{a[0]:.1f}", f"{b[0]:.1f}", f"{n / a[0]:.0f}", f"{n / b[0]:.0f}",
                     f"{b[0] / a[0]:.2f}x", note))
        print(f"  {name}: {a[0]:.1f}s vs {b[0]:.1f}s {note}", flush=True)

    measured = pretune_measurements(args, train_csv, work, line)
    rates = matmul_rates(args.threads) if measured else {}

    if "4" in args.only:
        print("4. a linear-probe trial with the feature cache warm against without it", flush=True)
        cold, cached = probe_pair(train_csv, args.threads)
        a, b = best_of(args.repeats, cached, cold)
        line("linear probe: feature cache warm vs none", a, b, args.rows * PROBE_EPOCHS,
             f"valid acc {a[1]:.4f} vs {b[1]:.4f}")

    if "7" in args.only:
        candidates_report(train_csv, args.threads, max(args.repeats, 2))

    if "8" in args.only:
        compile_report(train_csv, args.threads)

    if "9" in args.only:
        cpu_speed_report(train_csv, args.threads, args.rows, max(args.repeats, 2))

    prep = None
    if "5" in args.only:
        print("5. data preparation: second trial against first", flush=True)
        prep = data_prep(train_csv, args.threads)

    print()
    print(f"machine: {platform.machine()}, {args.threads} threads of {os.cpu_count()} cores, "
          f"bf16 native: {cpu_has_bf16()}, torch {torch.__version__}; MiniLM-L6 "
          f"({model_dir().rsplit('/', 2)[-2]}), {args.rows} SST-2 training rows, 872 validation")
    print_table(("measurement", "A s", "B s", "A ex/s", "B ex/s", "A speed-up", "note"), rows)
    if prep is not None:
        first, second = prep
        print(f"data preparation (tokenize, measure max_length): first trial {first * 1000:.0f} "
              f"ms, second trial {second * 1000:.1f} ms ({second / max(first, 1e-9):.3f} of the "
              f"first)")
    if measured:
        limit_report(measured, rates, args.threads)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
