"""The report and compare pages in headless Chromium at 800 and 1400 px: built from real runs
of the tiny model (the full cost table, a perplexity column, pooled seeds), they never scroll
sideways and no table or figure is cut. Skipped where no Chromium binary is installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from everlearn.report.compare import compare_runs, format_comparison
from tests.helpers.chromium import measure, require_chromium
from tests.helpers.pages import tiny_runs

WIDTHS = (800, 1400)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    require_chromium()  # skip before training anything
    return tiny_runs(tmp_path_factory.mktemp("pages"))


@pytest.fixture(scope="module")
def compare_page(runs, tmp_path_factory) -> Path:
    page = tmp_path_factory.mktemp("compare") / "compare.html"
    page.write_text(format_comparison(compare_runs([str(r) for r in runs]), "html"),
                    encoding="utf-8")
    return page


def assert_fits(layout) -> None:
    assert not layout.scrolls_sideways, (
        f"{layout.width} px: the page scrolls sideways ({layout.scroll_width} > "
        f"{layout.client_width})")
    assert layout.cut() == [], f"{layout.width} px: cut off: {layout.cut()}"


@pytest.mark.parametrize("width", WIDTHS)
def test_report_page_fits_the_window(runs, width):
    page = runs[0] / "report" / "index.html"
    html = page.read_text(encoding="utf-8")
    assert "Training loss" in html and 'class="cost"' in html  # what is measured is there
    layout = measure(page, width)
    assert_fits(layout)
    tables = [it for it in layout.items if it["tag"] == "table"]
    imgs = [it for it in layout.items if it["tag"] == "img"]
    assert len(imgs) == 3 and len(tables) >= 8  # matrix, scores, loss; the tables measured
    # the cost tables fit without their own scroll bar, at 800 px too
    cost = [it for it in layout.items if it["tag"] == "table" and "cost" in it["cls"]]
    assert len(cost) == 2
    assert all(it["right"] <= layout.client_width for it in cost)
    scrolling = [it["text"] for it in layout.inner_scrollers()]
    assert not any(t.startswith("phase") for t in scrolling), scrolling


@pytest.mark.parametrize("width", WIDTHS)
def test_compare_page_fits_the_window(compare_page, width):
    html = compare_page.read_text(encoding="utf-8")
    assert "skipped: " in html and "(no results.json)" in html
    assert "data:image/png" in html  # the AP / BWT figure
    layout = measure(compare_page, width)
    assert_fits(layout)
    assert [it for it in layout.items if it["tag"] == "img"]
    if width == 1400:  # room for the whole comparison table without a scroll box
        assert layout.inner_scrollers() == []
