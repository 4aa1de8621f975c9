"""The documentation agrees with the code: the generated API reference is current, and every
relative link in README.md and docs/*.md points to a file that exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# [text](target) and ![alt](target), with an optional "title"; code is stripped first.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def relative_links(path: Path) -> list[str]:
    text = INLINE_CODE.sub("", FENCE.sub("", path.read_text()))
    links = []
    for target in LINK.findall(text):
        if EXTERNAL.match(target) or target.startswith("#"):
            continue
        links.append(target)
    return links


def test_api_reference_is_current() -> None:
    result = subprocess.run(
        [
            str(VENV_PYTHON if VENV_PYTHON.exists() else sys.executable),
            str(ROOT / "scripts" / "gen_api_reference.py"),
            "--check",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (
        "docs/api-reference.md does not match the code; regenerate it with "
        "`.venv/bin/python scripts/gen_api_reference.py`\n" + result.stdout + result.stderr
    )


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    missing = []
    for target in relative_links(doc):
        file_part = target.split("#", 1)[0].split("?", 1)[0]
        if not file_part:
            continue
        if not (doc.parent / file_part).exists():
            missing.append(target)
    assert not missing, f"{doc.relative_to(ROOT)} links to missing files: {missing}"


def test_readme_links_every_docs_page() -> None:
    linked = {
        (ROOT / target.split("#", 1)[0]).resolve() for target in relative_links(ROOT / "README.md")
    }
    pages = {page.resolve() for page in (ROOT / "docs").glob("*.md")}
    unlinked = sorted(str(page.relative_to(ROOT)) for page in pages - linked)
    assert not unlinked, f"README.md's Documentation section does not link: {unlinked}"


def test_link_finder_sees_links() -> None:
    # Guard against a regex that silently matches nothing.
    assert "docs/configuration.md" in relative_links(ROOT / "README.md")
