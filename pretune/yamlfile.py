"""Reading a YAML mapping from a file a user named, with one-line errors.

It sits beside ``errors.py``: it imports nothing else of ours, so every layer may use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
