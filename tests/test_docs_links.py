"""Every relative link in README.md, docs/*.md and the folders' README.md files points at a file
that exists, and every #anchor at a heading of the page it names (GitHub's rule for heading
ids). No network."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FOLDER_READMES = sorted(p for p in ROOT.glob("*/README.md") if not p.parent.name.startswith("."))
PAGES = DOCS + FOLDER_READMES
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target); targets here hold no spaces
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def links(page):
    text = FENCE.sub("", page.read_text())  # a link-like string inside a code block is code
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]  # skip https:, mailto:


def anchors(page):
    """The ids GitHub gives the page's headings: lowercase, punctuation dropped, spaces to '-'."""
    text = FENCE.sub("", page.read_text())
    ids = set()
    for heading in re.findall(r"^#+\s+(.*?)\s*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        ids.add(slug)
    return ids


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def test_the_pages_are_found_and_the_readme_is_short():
    assert len(DOCS) > 1 and all(links(p) for p in DOCS)
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300
