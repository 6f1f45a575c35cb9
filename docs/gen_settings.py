"""Write docs/settings.md, the settings reference, from the code so that it cannot drift.

Every row comes from ``pretune.config``: the setting's name, group and default are the
dataclass fields; "what it does" is the comment written beside (or just above) the field; the
accepted values are what ``validate`` says when given a value it refuses. The "searched" columns
come from ``pretune.search.space``: the default space and the full space a space file draws on.
The hand-written part of the page is docs/settings.intro.md, copied first.

    python docs/gen_settings.py            # rewrite docs/settings.md
    python docs/gen_settings.py --check    # exit 1 when docs/settings.md is out of date

``make docs`` runs it before building the site; tests/test_docs.py fails when the committed
page differs from what this script writes.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import sys
import tokenize
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
PAGE = DOCS / "settings.md"
INTRO = DOCS / "settings.intro.md"
CONFIG_SOURCE = ROOT / "pretune" / "config.py"

if str(ROOT) not in sys.path:  # run from anywhere: import this checkout's pretune
    sys.path.insert(0, str(ROOT))

from pretune import config  # noqa: E402
from pretune.errors import ConfigError  # noqa: E402
from pretune.search import space  # noqa: E402

GROUPS = (("data", config.DataConfig, "Data"), ("model", config.ModelConfig, "Model"),
          ("train", config.TrainConfig, "Training"))


def field_comments(source: str, class_name: str) -> dict[str, str]:
    """The comment of each field of ``class_name``: the comment on its line, after the comment
    block just above it (a block directly above the field, with no blank line between)."""
    comments = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    out = {}
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, line = [], node.lineno - 1
        while line >= 1 and lines[line - 1].strip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        parts = above + ([comments[node.lineno]] if node.lineno in comments else [])
        out[node.target.id] = " ".join(parts)
    return out


def _check_run_setting(group: str, name: str, value) -> None:
    base = config.RunConfig()
    section = dataclasses.replace(getattr(base, group), **{name: value})
    config.validate(dataclasses.replace(base, **{group: section}))


def _check_tune_setting(group: str, name: str, value) -> None:
    config.validate_tune(dataclasses.replace(config.TuneConfig(), **{name: value}))


def accepted(group: str, name: str, default, check=_check_run_setting) -> str:
    """What validation accepts for one setting, in its own words: the rule of the error it
    raises for a value it refuses (an unknown name for text choices, a far-off number else)."""
    if isinstance(default, bool):
        return "true, false"
    probes = ("no-such-value",) if isinstance(default, str) else (-(10**30), -1e30)
    if name == "budget":  # checked by its own parser, whose rule is on the Search page
        return ""
    for probe in probes:
        try:
            check(group, name, probe)
        except ConfigError as err:
            rule = str(err).split(", but got")[0]
            prefix = f"{name} must be "
            if rule.startswith(prefix) and "whole number" not in rule:
                return rule[len(prefix):].replace("one of ", "")
        except Exception:  # a check that does not expect this type: nothing to say
            pass
    return ""


def describe(dim) -> str:
    """A dimension of the search space, as a reader would write it."""
    if dim.kind == "categorical":
        text = ", ".join(_value(c) for c in dim.choices)
    else:
        text = f"{_value(dim.low)} to {_value(dim.high)}"
        if dim.log:
            text += " (log)"
        if dim.step:
            text += f", step {_value(dim.step)}"
    for parent, values in dim.when:
        text += f"; when {parent} is {' or '.join(_value(v) for v in values)}"
    return text


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|") if text else ""


def group_table(group: str, cls, source: str) -> list[str]:
    notes = field_comments(source, cls.__name__)
    defaults = dataclasses.asdict(getattr(config.RunConfig(), group))
    rows = ["| setting | default | accepted | searched by default | full space | what it does |",
            "|---|---|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        default = defaults[f.name]
        searched = describe(space.DEFAULT[f.name]) if f.name in space.DEFAULT else ""
        full = describe(space.FULL[f.name]) if f.name in space.FULL else ""
        allowed = accepted(group, f.name, default)
        note = notes.get(f.name, "")
        listed = " | ".join(allowed.split(", "))
        if allowed and note.endswith(listed):  # drop a note's list of the accepted values
            note = note[: len(note) - len(listed)].rstrip()
        cells = (f"`{f.name}`", f"`{_value(default)}`", allowed, searched, full, note)
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return rows


def tune_table(source: str) -> list[str]:
    notes = field_comments(source, "TuneConfig")
    rows = ["| setting | default | accepted | what it does |", "|---|---|---|---|"]
    for f in dataclasses.fields(config.TuneConfig):
        default = getattr(config.TuneConfig(), f.name)
        allowed = accepted("tune", f.name, default, _check_tune_setting)
        rows.append(f"| `{f.name}` | `{_value(default)}` | {_cell(allowed)} "
                    f"| {_cell(notes.get(f.name, ''))} |")
    return rows


def render() -> str:
    source = CONFIG_SOURCE.read_text(encoding="utf-8")
    out = [INTRO.read_text(encoding="utf-8").rstrip(), "",
           "<!-- Generated by docs/gen_settings.py from pretune/config.py and "
           "pretune/search/space.py; edit those (or docs/settings.intro.md), then run "
           "`make docs`. -->", ""]
    for group, cls, title in GROUPS:
        out += [f"## {title} settings (`{group}`)", "", cls.__doc__.strip(), ""]
        out += group_table(group, cls, source) + [""]
    out += ["## Search settings (`pretune tune` flags)", "",
            "These belong to the search, not to a training run: they are flags of "
            "`pretune tune` (and arguments of `pretune.tune`), never searched.", ""]
    out += tune_table(source) + [""]
    extra = [d for d in space.DEFAULT_SPACE if d.name not in space.FULL]
    assert not extra, f"default dimensions missing from the full space: {extra}"
    return "\n".join(out)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if PAGE.read_text(encoding="utf-8") != text:
            print(f"{PAGE} is out of date: run `make docs` (or python docs/gen_settings.py).")
            return 1
        return 0
    PAGE.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
