"""The generated references in docs/ match the code (regenerate: python -m everlearn.docgen)."""

from pathlib import Path

import pytest

from everlearn.docgen import DOCS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(DOCS))
def test_generated_docs_are_current(name):
    committed = (ROOT / "docs" / name).read_text(encoding="utf-8")
    assert committed == DOCS[name]() + "\n", f"docs/{name} is stale: run python -m everlearn.docgen"
