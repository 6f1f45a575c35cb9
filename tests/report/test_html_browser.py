"""The report of a real search, opened in headless Chromium: every chart draws its data, the
page logs no JavaScript error, nothing is fetched from a network, and a screenshot is taken."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from pretune.report.html import write_report
from pretune.search.history import read_history

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--enable-unsafe-swiftshader", "--hide-scrollbars"]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium; .ci/run does it)")

# Injected first in <head> of a copy of the page: it records uncaught errors, rejected promises
# and console.error calls, then, once the page has loaded and plotly has drawn, writes what each
# chart holds into the DOM, which --dump-dom prints.
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push('error: ' + e.message));
window.addEventListener('unhandledrejection', e => window.__errors.push('rejection: ' + e.reason));
const __consoleError = console.error;
console.error = (...a) => { window.__errors.push('console.error: ' + a.join(' ')); __consoleError(...a); };
window.addEventListener('load', () => setTimeout(() => {
  const charts = [...document.querySelectorAll('.js-plotly-plot')].map(gd => ({
    id: gd.id,
    traces: (gd._fullData || []).map(t => ({
      type: t.type,
      points: ['x', 'y', 'z'].map(k => (t[k] && t[k].length) || 0).reduce((a, b) => Math.max(a, b), 0)
              || (t.dimensions ? t.dimensions[0].values.length : 0),
    })),
    svg: gd.querySelectorAll('svg.main-svg').length,
    marks: gd.querySelectorAll('g.trace path, g.trace .point, g.hm image, .bars path').length,
    parcoords: {axes: gd.querySelectorAll('.parcoords .y-axis').length,
                canvases: gd.querySelectorAll('canvas.gl-canvas-focus').length},
  }));
  const out = document.createElement('pre');
  out.id = 'probe-result';
  out.textContent = JSON.stringify({charts, errors: window.__errors});
  document.body.appendChild(out);
}, 1500));
</script>"""


@pytest.fixture(scope="module")
def report(tiny_search_run, tmp_path_factory):
    out, _, _ = tiny_search_run
    path = write_report(out)
    return out, path


def _chromium(*args, timeout=120):
    return subprocess.run([CHROMIUM, *FLAGS, *args], capture_output=True, text=True,
                          timeout=timeout)


def test_report_renders_every_chart_with_data_and_no_js_error(report, tmp_path):
    out, path = report
    page = path.read_text(encoding="utf-8")
    # Self-contained: no script, style or image comes from anywhere but the page.
    assert not re.search(r"<script[^>]+src=", page)
    assert not re.search(r"<link[^>]+href=", page)
    assert "Plotly.newPlot" in page and len(page) > 1_000_000  # plotly.js is inline

    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    done = _chromium("--enable-logging=stderr", "--v=0", "--virtual-time-budget=20000",
                     "--dump-dom", probed.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="probe-result">(.*?)</pre>', done.stdout, re.S)
    assert found, "the page did not finish loading: " + done.stderr[-2000:]
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))

    assert result["errors"] == []
    assert "Uncaught" not in done.stderr
    history = read_history(out)
    assert history.counts == {"COMPLETE": 4}
    # best so far, curves, importance, parallel coordinates, score vs lr and vs batch size,
    # confusion matrix, time and memory.
    assert len(result["charts"]) == 8 == page.count("Plotly.newPlot(")
    for chart in result["charts"]:
        assert chart["svg"] >= 1, chart
        assert chart["traces"] and all(t["points"] > 0 for t in chart["traces"]), chart
        if chart["traces"][0]["type"] == "parcoords":  # lines drawn with WebGL, axes in SVG
            assert chart["parcoords"]["canvases"] == 1 and chart["parcoords"]["axes"] >= 3, chart
        else:
            assert chart["marks"] > 0, chart
    # The learning curves (the second chart, after the best score so far): one line per trial
    # that reported, each drawn with as many points as that trial has evaluations.
    curves = {c["id"]: c for c in result["charts"]}["chart-2"]
    reported = [c for c in history.curves if c.values]
    assert len(reported) == 4
    assert [t["type"] for t in curves["traces"]] == ["scatter"] * len(reported)
    assert [t["points"] for t in curves["traces"]] == [len(c.values) for c in reported]
    assert all(len(c.values) >= 2 for c in reported)  # curves, not single points


def test_screenshot_of_the_report(report, tmp_path):
    _, path = report
    shot = tmp_path / "report.png"
    done = _chromium("--window-size=1200,3000", "--virtual-time-budget=20000",
                     f"--screenshot={shot}", path.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1200, 3000)
    assert len(data) > 50_000  # a page of charts, not a blank one
