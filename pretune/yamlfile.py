"""YAML in and out: a mapping from a file a user named (one-line errors), plain values to write.

It sits beside ``errors.py``: it imports nothing else of ours, so every layer may use it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from pretune.errors import ConfigError


def read_mapping(path: str | Path, flag: str, example: str = "'name: value'") -> dict[str, Any]:
    """The mapping in YAML file ``path`` ({} for an empty file), named ``flag`` in errors."""
    import yaml

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{flag} must name an existing YAML file, but {str(p)!r} does not "
                          f"exist. Check the path.")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{flag} must be valid YAML, but {p.name} has a syntax error{where}. "
                          f"Fix the file.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{flag} must be a readable UTF-8 text file, but {p.name} could not be "
                          f"read ({type(err).__name__}). Check the file.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{flag} must hold a mapping, but {p.name} holds a "
                          f"{type(data).__name__}. Write {example} lines.")
    return data


def plain(value: Any) -> Any:
    """``value`` as plain YAML and JSON types: numpy and torch scalars to numbers, tuples to
    lists, sets to sorted lists, paths to strings, mapping keys that are not scalars to str."""
    if isinstance(value, Mapping):
        return {(k if isinstance(k, (str, int, float, bool)) or k is None else str(k)): plain(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(plain(v) for v in value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()  # numpy / torch scalar
    return value
