"""mkdocs hook: links from a docs page to a file of the repository outside docs/.

The pages are written to read on GitHub too, where ``[bench/README.md](../bench/README.md)``
is a working link. The site holds only docs/, so such a link is rewritten: to the file on
the repository's site when mkdocs.yml sets ``repo_url``, else to the path as plain code. Only
links to files that exist are rewritten; a link to a missing file is left for mkdocs to report,
which fails ``mkdocs build --strict``.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s#]+)(#[^)\s]*)?\)")


def on_page_markdown(markdown, page, config, files):
    docs = Path(config["docs_dir"]).resolve()
    root = docs.parent
    page_dir = posixpath.dirname(page.file.src_uri)

    def rewrite(match: re.Match) -> str:
        text, target, anchor = match.group(1), match.group(2), match.group(3) or ""
        if "://" in target or target.startswith(("/", "mailto:")):
            return match.group(0)
        path = (docs / page_dir / target).resolve()
        if path.is_relative_to(docs) or not path.is_relative_to(root) or not path.exists():
            return match.group(0)
        relative = path.relative_to(root).as_posix()
        if config.get("repo_url"):
            edit = (config.get("edit_uri") or "blob/main/").replace("edit/", "blob/")
            url = config["repo_url"].rstrip("/") + "/" + edit.strip("/") + "/" + relative
            return f"[{text}]({url}{anchor})"
        return f"`{relative}`" if text.strip("`") == relative else f"{text} (`{relative}`)"

    return LINK.sub(rewrite, markdown)
