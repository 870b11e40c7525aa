"""The report's links to the predictions files (RUN_DIR/predictions/, see
everlearn.runs.predictions): one row per row of R, one link per stage scored in it.

The files stay beside the page (they can be large); the links are relative to
RUN_DIR/report/index.html, so they work wherever the run directory is copied. The table sits
in the page's sideways-scrolling box (``div.tw``) like the page's other tables.
"""

from __future__ import annotations

from html import escape
from typing import Any


def predictions_section(res: dict[str, Any]) -> str:
    """The "Predictions" section, or "" for a run without predictions files."""
    per_row = res.get("predictions")
    if not isinstance(per_row, list) or not any(isinstance(r, dict) and r for r in per_row):
        return ""
    labels = res.get("rows") or []
    names = [s.get("name") for s in res.get("stages") or [] if isinstance(s, dict)]
    head = "".join(f"<th>{escape(str(n))}</th>" for n in names)
    body = []
    for k, files in enumerate(per_row):
        files = files if isinstance(files, dict) else {}
        label = labels[k] if k < len(labels) else k
        cells = "".join(
            f'<td><a href="../{escape(files[n])}">jsonl</a></td>' if _inside(files.get(n))
            else "<td></td>" for n in names)
        body.append(f"<tr><td>{escape(str(label))}</td>{cells}</tr>")
    return ('<h2 id="predictions">Predictions</h2><p class="note">What the model produced for '
            "every test record (generated text, the chosen option and every option's "
            "log-likelihood, preference margins, edit hits), with the reference and the "
            "record's score; one JSON Lines file per row of R and stage.</p>"
            f'<div class="tw"><table class="predictions"><thead><tr><th>after \\ on</th>'
            f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def _inside(rel: Any) -> bool:
    """Whether ``rel`` names a file under RUN_DIR/predictions/ (a link never leaves it)."""
    return (isinstance(rel, str) and rel.startswith("predictions/")
            and ".." not in rel.split("/") and "\\" not in rel and ":" not in rel)
