"""The settings reference (docs/settings.md) is written from the code by docs/gen_settings.py;
these tests fail when the committed page has fallen behind pretune/config.py or the search
space, and when what the page says does not match the code it was written from."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pretune import config
from pretune.errors import ConfigError
from pretune.search import space

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("gen_settings", ROOT / "docs" / "gen_settings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_settings_page_is_what_the_generator_writes():
    committed = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    assert committed == _generator().render(), (
        "docs/settings.md is out of date with pretune/config.py or pretune/search/space.py: "
        "run `make docs` (or python docs/gen_settings.py) and commit docs/settings.md")


def _row(page: str, name: str) -> list[str]:
    line = next(l for l in page.splitlines() if l.startswith(f"| `{name}` |"))
    return [cell.strip() for cell in line.strip("|").split(" | ")]


def test_page_lists_every_setting_with_its_default_and_search_range():
    page = _generator().render()
    defaults = config.RunConfig().flat()
    for name in config.setting_names():
        row = _row(page, name)
        assert row[1] == f"`{_generator()._value(defaults[name])}`", name
    assert _row(page, "lr")[1] == "`5e-05`"
    assert _row(page, "lr")[3] == "1e-05 to 0.0002 (log)"  # the default space
    assert _row(page, "momentum")[4] == "0.5 to 0.99; when optimizer is momentum or nesterov"
    assert _row(page, "optimizer")[2] == ", ".join(config.OPTIMIZERS)
    assert _row(page, "warmup_ratio")[2] == "in [0.0, 0.9]"
    searched = {n for n in config.setting_names() if _row(page, n)[3]}
    assert searched == set(space.DEFAULT)


def test_unknown_setting_error_points_to_a_page_that_exists():
    with pytest.raises(ConfigError) as err:
        config.locate("learning_rat")
    assert "docs/settings.md" in str(err.value)
    assert (ROOT / "docs" / "settings.md").is_file()


@pytest.mark.parametrize("page", ["README.md", "bench/README.md"])
def test_links_of_pages_outside_the_site_lead_to_files_that_exist(page):
    """`make docs` checks the links of docs/; these pages are read on GitHub, outside it."""
    import re

    source = ROOT / page
    links = re.findall(r"\]\(([^)\s]+)\)", source.read_text(encoding="utf-8"))
    local = [l.split("#")[0] for l in links if "://" not in l and not l.startswith("#")]
    assert local or page != "README.md"
    missing = [l for l in local if l and not (source.parent / l).exists()]
    assert not missing, f"{page} links to files that do not exist: {missing}"
