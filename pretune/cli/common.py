"""What every command shares: quiet third-party libraries, one-line errors, settings from flags."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from typer.core import TyperGroup

try:  # recent Typer carries its own copy of Click; its exceptions are the ones raised
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - Typer on the Click package
    from click.exceptions import UsageError

from pretune.errors import ConfigError, PretuneError
from pretune.yamlfile import read_mapping

console = Console(stderr=True)

# How much the commands print: -1 quiet (results only), 0 normal, 1 verbose (library logs too).
_output = {"level": 0}


def output_level() -> int:
    return _output["level"]


def set_output_level(level: int) -> None:
    _output["level"] = level


def set_verbose() -> None:
    """Show library logs and warnings from here on (a command's own --verbose)."""
    set_output_level(1)
    logging.getLogger().setLevel(logging.INFO)
    warnings.resetwarnings()
    try:
        import transformers  # transformers loads only when this runs

        transformers.logging.set_verbosity_warning()
    except Exception:  # pragma: no cover - transformers is a core dependency
        pass


def quiet_libraries(verbose: bool = False) -> None:
    """Silence warnings and progress bars from libraries that users cannot act on."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if not verbose:  # --log-to mlflow: its database set-up lines say nothing to act on
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if verbose:
        return
    warnings.filterwarnings("ignore")
    try:
        import transformers  # transformers loads only when this runs

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers is a core dependency
        pass
    for name in ("datasets", "huggingface_hub", "urllib3", "filelock"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from pretune.search.records import quiet_optuna  # optuna loads only when this runs

    quiet_optuna()


def run_command(fn: Callable[[], Any]) -> Any:
    """Run a command body; a PretuneError becomes one line on stderr and exit code 2. What a
    command writes (run directories, reports, predictions) is for its owner only
    (``pretune.permissions``)."""
    from pretune.permissions import private_files

    try:
        with private_files():
            return fn()
    except PretuneError as err:
        if os.environ.get("PRETUNE_DEBUG"):
            raise
        console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=err.exit_code) from None
    except KeyboardInterrupt:
        console.print("interrupted; run the same command again to continue", highlight=False)
        raise typer.Exit(code=130) from None


class OneLineErrors(TyperGroup):
    """The command group: a flag Click rejects (not a number, out of its range, unknown) is one
    line and exit code 2, like every other input error, instead of a usage box."""

    argv: list[str] = []

    def main(self, args=None, *rest, **kwargs):
        self.argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
        return super().main(args, *rest, **kwargs)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UsageError as err:
            command = err.ctx.command_path if err.ctx is not None else ctx.command_path
            message = " ".join(err.format_message().split()).rstrip(".")
            given = _given(self.argv, getattr(getattr(err, "param", None), "opts", None) or [])
            if given is not None and repr(given) not in message and given not in message:
                message += f"; got {given!r}"
            console.print(f"[bold red]error:[/] {escape(message)}. See {escape(command)} --help "
                          f"for what it takes.", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None


def _given(argv: list[str], opts: list[str]) -> str | None:
    """The value given on the command line to an option named by one of ``opts``."""
    for i, token in enumerate(argv):
        for opt in opts:
            if token == opt and i + 1 < len(argv):
                return argv[i + 1]
            if token.startswith(opt + "="):
                return token[len(opt) + 1:]
    return None


def parse_sets(pairs: list[str] | None, flag: str = "--set") -> dict[str, str]:
    """``["lr=3e-5", "head_layers=1"]`` to a dict; a pair without '=' is a ConfigError."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"{flag} must be written key=value, but got {pair!r}. Write it like {flag} lr=3e-5."
            )
        out[key.strip()] = value.strip()
    return out


def given_settings(flags: dict[str, Any], *, allow_pickle: bool = False,
                   trust_remote_code: bool = False) -> dict[str, Any]:
    """The settings a user gave as flags: those not left at None, plus the safety opt-ins
    (which are only ever switched on from the command line, never off over a config file)."""
    settings = {k: v for k, v in flags.items() if v is not None}
    if allow_pickle:
        settings["allow_pickle"] = True
    if trust_remote_code:
        settings["trust_remote_code"] = True
    return settings


# --- options that `pretune train` and `pretune tune` share ---------------------------------------
# Declared once here; a command takes one as ``train: TrainOption = None``.

TrainOption = Annotated[Optional[str], typer.Option(
    "--train", help="Training data: CSV, TSV, JSONL, Parquet, or a Hugging Face dataset.")]
ValidOption = Annotated[Optional[str], typer.Option(
    "--valid", help="Validation data; without it, a stratified split of --train.")]
ModelOption = Annotated[Optional[str], typer.Option(
    "--model", help="Hugging Face model id or local directory.")]
TextColumnOption = Annotated[Optional[str], typer.Option("--text-column")]
TextPairColumnOption = Annotated[Optional[str], typer.Option("--text-pair-column")]
LabelColumnOption = Annotated[Optional[str], typer.Option("--label-column")]
ImageColumnOption = Annotated[Optional[str], typer.Option(
    "--image-column", help="Column of image paths (images are detected without it).")]
TaskOption = Annotated[Optional[str], typer.Option(
    "--task", help="auto (default: detected from the label column; lists of words with lists of "
                   "tags: token), classification, regression, multilabel or token.")]
LabelAllSubtokensOption = Annotated[Optional[bool], typer.Option(
    "--label-all-subtokens/--label-first-subtoken",
    help="Token classification: every sub-word token of a word learns its tag (default: only "
         "the first).")]
LabelNamesOption = Annotated[Optional[str], typer.Option(
    "--label-names", help="Token classification: names of integer tags in id order, e.g. "
                          "O,B-PER,I-PER,B-LOC,I-LOC.")]
TrainRowsOption = Annotated[Optional[int], typer.Option(
    "--train-rows", help="Sample this many training rows (stratified).")]
UnlabeledOption = Annotated[Optional[str], typer.Option(
    "--unlabeled", help="More texts (one per line, or a table's text column) for masked-LM "
                        "pretraining on the task before fine-tuning (tapt_steps).")]
MaxLengthOption = Annotated[Optional[int], typer.Option("--max-length")]
PrecisionOption = Annotated[Optional[str], typer.Option(
    "--precision", help="auto (bf16 where the hardware has it), bf16, fp16 or fp32.")]
DpEpsilonOption = Annotated[Optional[float], typer.Option(
    "--dp-epsilon", help="Train with differential privacy (DP-SGD, needs opacus) within this "
                         "epsilon (per trial in a search).")]
DpDeltaOption = Annotated[Optional[float], typer.Option(
    "--dp-delta", help="Delta of --dp-epsilon (default 1 / training rows).")]
DpMaxGradNormOption = Annotated[Optional[float], typer.Option(
    "--dp-max-grad-norm", help="Per-example gradient clipping norm of --dp-epsilon (default 1.0).")]
MaskPiiOption = Annotated[Optional[bool], typer.Option(
    "--mask-pii/--no-mask-pii", help="Replace e-mail addresses, URLs, phone numbers and long "
    "numbers by [EMAIL], [URL], [PHONE], [NUMBER] before tokenizing, here and at predict.")]
AllowPickleOption = Annotated[bool, typer.Option(
    "--allow-pickle", help="Allow loading pickle weights (can run code).")]
TrustRemoteCodeOption = Annotated[bool, typer.Option(
    "--trust-remote-code", help="Allow a model's own Python code.")]

# The settings of a RunConfig that both commands take as flags of the same name.
DATA_FLAGS = ("train", "valid", "model", "text_column", "text_pair_column", "label_column",
              "train_rows", "image_column", "unlabeled", "max_length", "metric", "precision",
              "seed", "task", "label_all_subtokens", "label_names", "dp_epsilon", "dp_delta",
              "dp_max_grad_norm", "mask_pii")


def flag_settings(given: dict[str, Any], names: tuple[str, ...] = DATA_FLAGS) -> dict[str, Any]:
    """The settings among a command's arguments ``given`` (its ``locals()``): ``names`` not
    left at None, plus the safety opt-ins (see ``given_settings``)."""
    return given_settings({name: given[name] for name in names},
                          allow_pickle=given.get("allow_pickle", False),
                          trust_remote_code=given.get("trust_remote_code", False))


def read_yaml(path: str | Path, flag: str = "--config") -> dict:
    """A YAML mapping of settings from ``path``, with clear errors for a missing or bad file."""

    return read_mapping(path, flag)


def with_example(command: Callable, example: str) -> None:
    """Append ``example`` to a command's help, as its own paragraph: the first paragraph of a
    docstring is the one-line summary that ``pretune --help`` lists."""
    command.__doc__ = (command.__doc__ or "").rstrip() + "\n\n" + example.strip("\n") + "\n"


def is_terminal() -> bool:
    return sys.stderr.isatty()


class training_progress:
    """A step bar and one line per evaluation; plain log lines when not on a terminal.

    Used as ``with training_progress() as (on_step, on_eval): ...``.
    """

    def __init__(self, label: str = "training"):
        self.label = label
        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(),
            console=console, transient=True, disable=not console.is_terminal,
        )
        self.task = None

    def on_step(self, step: int, total: int, loss: float) -> None:
        if self.task is None:
            self.task = self.bar.add_task(self.label, total=total, loss=loss)
        self.bar.update(self.task, completed=step, loss=loss)

    def on_eval(self, step: int, metrics: dict) -> None:
        shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("accuracy", "f1_macro", "r2", "mae", "loss") if k in metrics)
        self.bar.console.print(f"step {step} (epoch {metrics.get('epoch', 0):.2f}): {shown}",
                               highlight=False)

    def __enter__(self):
        self.bar.__enter__()
        return self.on_step, self.on_eval

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)
