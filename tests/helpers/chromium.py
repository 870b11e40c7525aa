"""Measure a page's layout in headless Chromium: whether it scrolls sideways and whether any
table, figure or block reaches past the viewport, at a given window width.

A copy of the page gets a small script that, once the page has loaded, writes its measurements
as JSON into a ``<pre id="layout-result">``; ``chromium --dump-dom`` prints the DOM, and the
JSON is read back from it. No browser driver (playwright, selenium) is needed. Tests skip, with
the reason, where no Chromium binary is installed (CI images may lack it)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable",
              "chrome", "headless_shell")

MEASURE = """<script>
window.addEventListener("load", function () {
  var de = document.documentElement, vw = de.clientWidth, items = [];
  document.querySelectorAll("table, img, figure, pre, .tw, ul, dl, p, h1, h2").forEach(
    function (el) {
      var r = el.getBoundingClientRect(), tw = el.closest(".tw");
      items.push({tag: el.tagName.toLowerCase(), cls: el.className || "",
                  id: el.id || "", left: r.left, right: r.right,
                  in_scroller: !!tw && tw !== el,
                  scroller_scrolls: tw ? tw.scrollWidth > tw.clientWidth : false,
                  text: (el.textContent || "").slice(0, 60)});
    });
  var out = document.createElement("pre");
  out.id = "layout-result";
  out.textContent = JSON.stringify({scroll_width: de.scrollWidth, client_width: vw,
                                    items: items});
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str | None:
    """The path of a Chromium (or Chrome) binary, or None."""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def require_chromium() -> str:
    """The binary, or skip the test saying why."""
    binary = chromium()
    if binary is None:
        pytest.skip("no Chromium binary found (looked for "
                    + ", ".join(CANDIDATES) + " on PATH): page layout not checked")
    return binary


@dataclass
class Layout:
    width: int  # the window width asked for
    scroll_width: int  # document.documentElement.scrollWidth
    client_width: int  # the viewport's width without a vertical scroll bar
    items: list[dict]

    @property
    def scrolls_sideways(self) -> bool:
        return self.scroll_width > self.client_width

    def cut(self) -> list[dict]:
        """Elements that reach past the viewport and cannot be scrolled to: anything outside a
        sideways scroll container (``.tw``) whose box leaves [0, client width], or one inside
        a container that does not scroll although the element leaves the viewport."""
        out = []
        for it in self.items:
            outside = it["left"] < -0.5 or it["right"] > self.client_width + 0.5
            if outside and not (it["in_scroller"] and it["scroller_scrolls"]):
                out.append(it)
        return out

    def inner_scrollers(self) -> list[dict]:
        """The scroll containers that scroll at this width (a table too wide for the page)."""
        return [it for it in self.items if "tw" in it["cls"].split() and it["scroller_scrolls"]]


def measure(page: Path, width: int, height: int = 1000, timeout: float = 60.0) -> Layout:
    """Load a copy of ``page`` at ``width`` x ``height`` and measure it."""
    binary = require_chromium()
    text = page.read_text(encoding="utf-8")
    text = text.replace("</body>", MEASURE + "</body>", 1) if "</body>" in text else text + MEASURE
    with tempfile.TemporaryDirectory(prefix="layout-") as tmp:
        copy = Path(tmp) / "page.html"
        copy.write_text(text, encoding="utf-8")
        proc = subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu",
             f"--user-data-dir={tmp}/profile", f"--window-size={width},{height}",
             "--virtual-time-budget=5000", "--dump-dom", copy.as_uri()],
            capture_output=True, text=True, timeout=timeout, check=False)
    found = re.search(r'<pre id="layout-result">(.*?)</pre>', proc.stdout, re.S)
    if found is None:
        raise AssertionError(f"chromium gave no measurement (exit {proc.returncode}): "
                             f"{proc.stderr[-500:]}")
    data = json.loads(html.unescape(found.group(1)))
    return Layout(width, data["scroll_width"], data["client_width"], data["items"])
