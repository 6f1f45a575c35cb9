"""The page and table of pretune explain: one highlighted block per row, in the given order,
escaped text, misclassified rows marked; rendered in headless Chromium without a script error;
the run's report links to it."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from pretune.errors import ConfigError
from pretune.report.explain import explain_html, explain_table, write_explanation
from pretune.training.explain import Explained, order

ROWS = [
    Explained(0, "a <b>great</b> film", None, ["a", "<", "b", ">", "great"], [0.1, 0.0, 0.0, 0.0, 1.0],
              "positive", 0.93, "positive"),
    Explained(1, "an unbearable mess", None, ["an", "un", "##bear", "##able", "mess"],
              [0.0, -0.4, -0.2, -0.1, 1.0], "positive", 0.71, "negative"),
    Explained(2, "q ? answer", "answer", ["q", "?", "answer"], [0.2, 0.1, -1.0], "negative", 0.55,
              "negative", first_tokens=2),
]

_rng = np.random.default_rng(0)
IMAGE_ROW = Explained(3, "/data/red/r1.png", None, [], [], "red", 0.8, "blue",
                      pixels=_rng.integers(0, 255, (3, 32, 32), dtype=np.uint8),
                      heatmap=_rng.uniform(-1, 1, (32, 32)))


def test_an_image_row_shows_the_image_and_its_pixel_weights_inline():
    page = explain_html([IMAGE_ROW], "t")
    assert page.count('<div class="row wrong" data-row="3">') == 1
    assert page.count('src="data:image/png;base64,') == 3  # the image, again under its weights
    assert 'class="heat"' in page and "r1.png" in page


def test_page_has_one_highlighted_block_per_row_misclassified_first():
    page = explain_html(order(ROWS), "t")
    blocks = re.findall(r'<div class="row( wrong)?" data-row="(\d)">', page)
    assert [(bool(w), int(i)) for w, i in blocks] == [(True, 1), (False, 0), (False, 2)]
    assert "<b>great</b>" not in page and "&lt;" in page  # the text is escaped
    # word pieces join their word without a space (and without ##)
    assert re.search(r">un</span><span[^>]*>bear</span><span[^>]*>able</span> <span", page)
    assert page.count('class="tok"') == sum(len(r.tokens) for r in ROWS) + 2  # + the legend
    assert '<span class="sep">|</span>' in page  # the pair's two texts apart
    assert "<script" not in page and "http" not in page


def test_table_lists_top_tokens_and_labels(tmp_path):
    frame = explain_table(order(ROWS))
    assert list(frame["row"]) == [2, 1, 3]
    assert frame.loc[0, "top_tokens"] == "mess (+1.00)"
    assert frame.loc[0, "top_against"] == "unbearable (-0.70)"  # pieces summed into their word
    assert list(frame["misclassified"]) == [True, False, False]
    path = write_explanation(ROWS, tmp_path / "e.csv", "t")
    assert pd.read_csv(path)["text_pair"].isna().sum() == 2
    with pytest.raises(ConfigError, match=r"\.html or \.csv"):
        write_explanation(ROWS, tmp_path / "e.txt", "t")


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(e.message));
window.addEventListener('load', () => {
  const out = document.createElement('pre');
  out.id = 'probe';
  const rows = [...document.querySelectorAll('.row')];
  out.textContent = JSON.stringify({rows: rows.length,
    shaded: rows.filter(r => [...r.querySelectorAll('.tok')].some(
      t => getComputedStyle(t).backgroundColor !== 'rgba(0, 0, 0, 0)')
      || [...r.querySelectorAll('img.heat')].some(i => i.complete && i.naturalWidth === 32)).length,
    errors: window.__errors});
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium)")
def test_page_renders_in_chromium_one_highlighted_row_per_input_row(tmp_path):
    import json

    page = explain_html(order(ROWS + [IMAGE_ROW]), "t").replace("<head>", "<head>" + PROBE, 1)
    path = tmp_path / "explain.html"
    path.write_text(page, encoding="utf-8")
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--virtual-time-budget=5000", "--dump-dom", path.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stderr[-2000:]
    result = json.loads(found.group(1).replace("&quot;", '"'))
    assert result == {"rows": len(ROWS) + 1, "shaded": len(ROWS) + 1, "errors": []}
