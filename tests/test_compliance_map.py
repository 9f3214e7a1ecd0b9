"""docs/compliance.md points only at evidence that exists: every `tests/FILE::test` it names is a test function in that
file, every row has a status, and the articles and Annex A controls an auditor looks for are all on the page."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from .conftest import REPO

PAGE = REPO / "docs" / "compliance.md"
CITED = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")
STATUSES = ("built", "partial", "planned", "organisational")
ISO_CONTROLS = ("5.15", "5.17", "5.18", "5.33", "5.34", "8.2", "8.5", "8.10", "8.11", "8.12", "8.15", "8.16", "8.24")
GDPR_ARTICLES = ("Art. 5", "Art. 6", "Art. 15", "Art. 17", "Art. 20", "Art. 25", "Art. 30", "Art. 32", "Art. 33", "Art. 35", "Art. 44-49")
PDPL_ARTICLES = ("Art. 4", "Art. 5", "Art. 7", "Art. 9", "Art. 13", "Art. 14", "Art. 15", "Art. 20", "Art. 21", "Art. 22-23")


def defined_tests(path: Path) -> set[str]:
    """Names of the module-level test functions of one test file (parsed, not imported)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test_")}


def rows(section: str) -> list[list[str]]:
    """The table rows of one `## section` of the page, as cells."""
    text = PAGE.read_text(encoding="utf-8").split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]


def test_every_test_named_on_the_page_exists() -> None:
    cited = CITED.findall(PAGE.read_text(encoding="utf-8"))
    assert len(cited) > 40  # the pattern still finds the citations
    missing = [f"{f}::{t}" for f, t in sorted(set(cited)) if not (REPO / f).is_file() or t not in defined_tests(REPO / f)]
    assert not missing, f"docs/compliance.md names tests that do not exist: {missing}"


def test_every_row_has_a_status_and_built_rows_cite_a_test() -> None:
    for section in ("UAE PDPL", "GDPR", "ISO/IEC 27001:2022 Annex A"):
        found = rows(section)
        assert found, section
        for cells in found:
            status = cells[-1]
            assert status.split(" ", 1)[0] in STATUSES, (section, cells[0], status)
            if status == "built":
                assert CITED.search(cells[-2]), f"{section} {cells[0]}: a built row names the test that proves it"


def test_the_articles_and_controls_an_auditor_looks_for_are_on_the_page() -> None:
    iso = {cells[0].split(" ", 1)[0] for cells in rows("ISO/IEC 27001:2022 Annex A")}
    assert set(ISO_CONTROLS) <= iso, sorted(set(ISO_CONTROLS) - iso)
    gdpr = " ".join(cells[0] for cells in rows("GDPR"))
    pdpl = " ".join(cells[0] for cells in rows("UAE PDPL"))
    for article in GDPR_ARTICLES:
        assert re.search(re.escape(article) + r"[\s(,]", gdpr + " "), f"GDPR {article}"
    for article in PDPL_ARTICLES:
        assert re.search(re.escape(article) + r"[\s(,]", pdpl + " "), f"PDPL {article}"


def test_encryption_at_rest_is_built_and_cites_its_copied_file_tests() -> None:
    (crypto,) = [cells for cells in rows("ISO/IEC 27001:2022 Annex A") if cells[0].startswith("8.24")]
    assert "encryption at rest" in crypto[1] and crypto[-1] == "built"
    assert "tests/crypt/" in crypto[2] and "planned" not in " ".join(crypto)
