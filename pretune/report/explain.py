"""The page and table of ``pretune explain``: each row's tokens (or an image's pixels) shaded by
their weight toward the predicted label (green toward, red against), misclassified rows first,
then by confidence.

``explain_html`` returns one self-contained HTML page (inline CSS, no script, nothing fetched);
``explain_table`` a DataFrame with the top tokens of each row; ``write_explanation`` writes either
by the output's extension. Both take ``pretune.training.explain.Explained`` records (any objects
with the same attributes) and change nothing.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from pretune.errors import ConfigError
from pretune.report.html import page

_CSS = """
body{font:15px/1.5 system-ui,sans-serif;margin:2em auto;max-width:60em;padding:0 1em;color:#222}
.row{border:1px solid #ddd;border-radius:6px;padding:.6em .8em;margin:.6em 0}
.row.wrong{border-color:#c33;background:#fff6f6}
.head{font-size:13px;color:#555;margin-bottom:.3em}
.head b{color:#222}
.tok{border-radius:3px;padding:0 1px}
.note{color:#555;font-size:13px}
.sep{color:#999;padding:0 .4em}
.pics img{width:160px;height:auto;image-rendering:pixelated;margin-right:.6em}
.stack{position:relative;display:inline-block}
.stack .heat{position:absolute;left:0;top:0}
"""


def _shade(weight: float) -> str:
    alpha = min(1.0, abs(weight)) * 0.8
    rgb = "30,150,60" if weight >= 0 else "210,40,40"
    return f"background:rgba({rgb},{alpha:.2f})"


def _tokens_html(tokens: list[str], weights: list[float]) -> str:
    """Tokens as shaded spans; word pieces (``##x``) join the previous token without a space."""
    parts = []
    for token, weight in zip(tokens, weights):
        piece = token.startswith("##")
        shown = token[2:] if piece else token.replace("\u0120", "").replace("\u2581", "")
        span = (f'<span class="tok" style="{_shade(weight)}" title="{weight:+.3f}">'
                f"{html.escape(shown)}</span>")
        parts.append(span if piece or not parts else " " + span)
    return "".join(parts)


def _png(array) -> str:
    """A uint8 (height, width, 3 or 4) array as a data: URI."""
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _image_html(r) -> str:
    """The image the model saw, and beside it the same image under its pixel weights (green
    toward the prediction, red against), both inline PNGs."""
    import numpy as np

    image = np.ascontiguousarray(np.asarray(r.pixels).transpose(1, 2, 0))
    heat = np.asarray(r.heatmap, dtype=float)
    overlay = np.zeros(heat.shape + (4,), dtype=np.uint8)
    overlay[..., 1] = np.where(heat > 0, 150, 40)
    overlay[..., 0] = np.where(heat > 0, 30, 210)
    overlay[..., 3] = (np.clip(np.abs(heat), 0, 1) * 220).astype(np.uint8)
    name = html.escape(Path(r.text).name)
    return (f'<div class="pics"><img alt="{name}" src="{_png(image)}">'
            f'<span class="stack"><img alt="" src="{_png(image)}">'
            f'<img class="heat" alt="weights" src="{_png(overlay)}"></span></div>'
            f'<div class="note">{name}</div>')


def _row_html(r) -> str:
    wrong = r.misclassified is True
    confidence = "" if r.confidence is None else f" ({r.confidence:.1%})"
    label = "" if r.label is None else f" · label <b>{html.escape(r.label)}</b>"
    mark = " · <b>misclassified</b>" if wrong else ""
    head = (f'<div class="head">row {r.row + 1} · predicted <b>{html.escape(r.prediction)}</b>'
            f"{confidence}{label}{mark}</div>")
    if r.heatmap is not None:
        return (f'<div class="row{" wrong" if wrong else ""}" data-row="{r.row}">{head}'
                f'{_image_html(r)}</div>')
    n_first = len(r.tokens) if r.first_tokens is None else r.first_tokens
    body = _tokens_html(r.tokens[:n_first], r.weights[:n_first])
    if r.pair is not None:
        body += '<span class="sep">|</span>' + _tokens_html(r.tokens[n_first:], r.weights[n_first:])
    return f'<div class="row{" wrong" if wrong else ""}" data-row="{r.row}">{head}{body}</div>'


def explain_html(rows: list, title: str) -> str:
    """One page: a block per row in the given order."""
    blocks = "\n".join(_row_html(r) for r in rows)
    wrong = sum(1 for r in rows if r.misclassified)
    labelled = any(r.label is not None for r in rows)
    summary = f"{len(rows)} rows" + (f", {wrong} misclassified (shown first)" if labelled else "")
    return page(title, _CSS, f"""<h1>{html.escape(title)}</h1>
<p class="note">{summary}, by confidence. Each token (or pixel) is shaded by its integrated-gradients
attribution toward the predicted label: <span class="tok" style="{_shade(0.8)}">toward</span>,
<span class="tok" style="{_shade(-0.8)}">against</span>; hover a token for its weight
(scaled to the row's largest).</p>
{blocks}""")


def _listed(pairs: list[tuple[str, float]]) -> str:
    return "; ".join(f"{t} ({w:+.2f})" for t, w in pairs)


def explain_table(rows: list) -> pd.DataFrame:
    """One line per row: its text, prediction, confidence, label and top tokens for and against."""
    from pretune.training.explain import top_tokens

    frame = pd.DataFrame({
        "row": [r.row + 1 for r in rows],
        "text": [r.text for r in rows],
        "prediction": [r.prediction for r in rows],
        "confidence": [r.confidence for r in rows],
        "top_tokens": [_listed(top_tokens(r)) for r in rows],
        "top_against": [_listed(top_tokens(r, sign=-1)) for r in rows],
    })
    if any(r.pair is not None for r in rows):
        frame.insert(2, "text_pair", [r.pair for r in rows])
    if any(r.label is not None for r in rows):
        frame.insert(frame.columns.get_loc("prediction"), "label", [r.label for r in rows])
        frame["misclassified"] = [r.misclassified for r in rows]
    return frame


def write_explanation(rows: list, path: str | Path, title: str) -> Path:
    """Write ``rows`` to ``path``: a page (.html) or a table (.csv)."""
    from pretune.outdir import atomic_write

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".html", ".htm", ".csv"):
        raise ConfigError(f"--output must end in .html or .csv, but got {path.name!r}. "
                          f"Choose one of those extensions.")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix in (".html", ".htm"):
        atomic_write(path, explain_html(rows, title))
    else:
        atomic_write(path, explain_table(rows).to_csv(index=False))
    return path
