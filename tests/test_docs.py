"""The README is a quick start, and every link of the README and docs/ leads to a file of the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_first_screen_is_a_quick_start():
    first = "\n".join((ROOT / "README.md").read_text().splitlines()[:40])
    for needed in ("pip install", "make demo", "make test", "rca-gpu run FAILURES/", "report.html", "docs/"):
        assert needed in first, f"README's first 40 lines lack {needed!r}"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_relative_link_resolves(page):
    text = page.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
