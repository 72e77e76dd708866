"""README and docs/: short where a newcomer starts, every link resolves, every measured number
generated, every test a table names there."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from bench import docs

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """The heading anchors a Markdown renderer (GitHub's) makes for ``page``."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", page.read_text(), re.MULTILINE):
        text = unicodedata.normalize("NFKC", heading).lower().replace("`", "")
        found.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return found


def test_the_readme_is_short_and_starts_with_the_workshop():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 10 * 1024
    assert "make lab" in "\n".join(text.splitlines()[:30])
    assert "docs/instructors.md" in "\n".join(text.splitlines()[:12]), "instructors find their page on the first screen"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_link_resolves(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # the web: not reachable from the tests
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target} does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page.name}: {target}: no such heading"


@pytest.mark.parametrize("page", ["reliability.md", "security.md"])
def test_each_row_names_a_test_that_exists(page):
    text = (ROOT / "docs" / page).read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| fault injected")
            and not line.startswith("| attack") and not line.startswith("|---")]
    assert rows
    for row in rows:
        named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", row)
        assert named, f"{page}: a row names no test: {row[:80]}"
        for path, name in named:
            assert re.search(rf"^(async )?def {name}\(", (ROOT / path).read_text(), re.MULTILINE), f"{page}: no {path}::{name}"


def test_performance_is_the_render_of_the_committed_results():
    assert docs.PAGE.read_text() == docs.render(docs.load()), (
        "docs/performance.md is stale: `python -m bench.docs` renders it from bench/results/ (make bench does)")
    for image in re.findall(r"\(images/([\w.-]+\.png)\)", docs.PAGE.read_text()):
        assert (docs.IMAGES / image).stat().st_size > 10_000, f"{image}: made by the same command"
