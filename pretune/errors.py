"""Errors a user can fix.

A ``PretuneError`` message says, in one sentence each, the rule, what was given, and the fix.
The CLI prints it on one line and exits with code 2; anything else is a bug and stays an
exception with its traceback.
"""

from __future__ import annotations


class PretuneError(Exception):
    """Input a user can fix. The message is shown to the user as it is."""

    exit_code = 2

    def __init__(self, message: str):
        # One line only: the CLI prints the message as is.
        super().__init__(" ".join(str(message).split()))


class ConfigError(PretuneError):
    """A setting, flag or configuration file is wrong."""


class DataError(PretuneError):
    """A data file or its columns or labels are wrong."""


class ModelError(PretuneError):
    """A model cannot be loaded as asked."""


class MissingExtraError(PretuneError):
    """An optional dependency is needed and not installed."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the optional package '{package}', which is not installed. "
            f"Install it with: pip install 'pretune[{extra}]'"
        )


def one_of(name: str, value: object, choices) -> str:
    """Return ``value`` if it is in ``choices``, else raise a ConfigError listing them."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(
            f"{name} must be one of {', '.join(map(str, choices))}, but got {value!r}. "
            f"Pick one of those names."
        )
    return value  # type: ignore[return-value]
