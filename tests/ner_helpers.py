"""Small synthetic NER data (IOB2, PER/LOC/ORG) for the token-classification tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

PEOPLE = [["john", "smith"], ["mary"], ["peter", "jones"], ["anna", "lee"], ["tom"]]
PLACES = [["paris"], ["new", "york"], ["berlin"], ["london"], ["san", "diego"]]
ORGS = [["acme", "corp"], ["the", "un"], ["ibm"], ["red", "cross"]]
FRAMES = [
    ("{PER} lives in {LOC} .",),
    ("{PER} works for {ORG} in {LOC} .",),
    ("yesterday {ORG} said {PER} visited {LOC} .",),
    ("the weather in {LOC} was fine .",),
]


def _tagged(words: list[str], kind: str) -> list[tuple[str, str]]:
    return [(w, ("B-" if i == 0 else "I-") + kind) for i, w in enumerate(words)]


def sentences(n: int, seed: int = 0) -> list[dict]:
    """``n`` rows of ``{"tokens": [...], "tags": [...]}``: template sentences whose person,
    place and organization names are drawn with ``seed``."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        (frame,) = rng.choice(FRAMES)
        pairs: list[tuple[str, str]] = []
        for piece in frame.split():
            if piece == "{PER}":
                pairs += _tagged(rng.choice(PEOPLE), "PER")
            elif piece == "{LOC}":
                pairs += _tagged(rng.choice(PLACES), "LOC")
            elif piece == "{ORG}":
                pairs += _tagged(rng.choice(ORGS), "ORG")
            else:
                pairs.append((piece, "O"))
        rows.append({"tokens": [w for w, _ in pairs], "tags": [t for _, t in pairs]})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_conll(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    blocks = ["\n".join(f"{w} NN {t}" for w, t in zip(r["tokens"], r["tags"])) for r in rows]
    path.write_text("-DOCSTART- -X- O\n\n" + "\n\n".join(blocks) + "\n", encoding="utf-8")
    return path
