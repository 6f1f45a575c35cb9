"""Masking sensitive text: e-mail addresses, URLs, phone numbers and long numbers.

With ``mask_pii`` on, each text is rewritten before it is tokenized, in this order (an earlier
kind wins where two overlap):

- ``[EMAIL]``: ``name@host.tld`` (letters, digits and ``._%+-`` before the ``@``);
- ``[URL]``: anything from ``http://``, ``https://``, ``ftp://`` or ``www.`` to the next space,
  without trailing punctuation (a sentence's full stop stays);
- ``[NUMBER]``: a card-like run of four groups of four digits (``4111 1111 1111 1111``);
- ``[PHONE]``: groups of digits separated by spaces, dots or dashes, with 7 to 15 digits in
  all, either three or more groups or after a ``+country`` code or an area code in parentheses
  (``+1 (555) 123-4567``, ``020 7946 0958``, ``(030) 1234567``); dates (``2024-01-15``,
  ``15.01.2024``) and two-group runs such as year ranges (``1995-2005``) are left alone;
- ``[NUMBER]``: any other run of 5 or more digits (account numbers, IDs; 4-digit years stay).

It is pattern matching, not named-entity recognition: names and street addresses are not
found, and a number written in words is not a number here. The placeholders are plain text:
the tokenizer splits them as it splits any text (``[``, ``email``, ``]`` for BERT's), the same
way at training and at prediction. ``pretune.data.text_prep`` applies it as part of a run's
text preprocessing, so a model's ``pretune.yaml`` carries the setting and ``pretune predict``
(and the Python API, and ONNX prediction) mask their inputs the same way.
"""

from __future__ import annotations

import re
from typing import Sequence

EMAIL = "[EMAIL]"
URL = "[URL]"
PHONE = "[PHONE]"
NUMBER = "[NUMBER]"

_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_URL = re.compile(r"(?:\b(?:https?|ftp)://|\bwww\.)[^\s<>\"']*[^\s<>\"'.,;:!?)\]}]", re.IGNORECASE)
_CARD = re.compile(r"(?<!\d)\d{4}(?:[ -]\d{4}){3}(?!\d)")
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?|\d{2,4}[\s.-])"
    r"(?:\d{2,4}[\s.-]){0,3}\d{2,8}(?!\w)"
)
_DATE = re.compile(r"\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[.-]\d{1,2}[.-]\d{2,4}")
_DIGITS = re.compile(r"\d{5,}")


def _phone(match: re.Match) -> str:
    text = match.group(0)
    digits = sum(c.isdigit() for c in text)
    groups = len(re.findall(r"\d+", text))
    marked = text.startswith("+") or "(" in text  # a country code or an area code
    if _DATE.fullmatch(text.strip()) or not 7 <= digits <= 15 or (groups < 3 and not marked):
        return text
    return PHONE


def mask(text: str) -> str:
    """``text`` with its e-mail addresses, URLs, phone numbers and long digit runs replaced by
    ``[EMAIL]``, ``[URL]``, ``[PHONE]`` and ``[NUMBER]``."""
    text = _EMAIL.sub(EMAIL, text)
    text = _URL.sub(URL, text)
    text = _CARD.sub(NUMBER, text)
    text = _PHONE.sub(_phone, text)
    return _DIGITS.sub(NUMBER, text)


def mask_all(texts: Sequence[str]) -> list[str]:
    """``mask`` of every text."""
    return [mask(t) for t in texts]


__all__ = ["mask", "mask_all", "EMAIL", "URL", "PHONE", "NUMBER"]
