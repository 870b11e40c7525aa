"""Any JSON value as escaped HTML: results keys the page has no section for still show up."""

from __future__ import annotations

import math
from html import escape
from typing import Any


def fmt(v: Any, digits: int = 2) -> str:
    """A cell's text: floats rounded, ``None`` as n/a, large ints with separators."""
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.3g}" if v and abs(v) < 10 ** -digits else f"{v:.{digits}f}"
    return str(v)


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def table(header: list[str] | None, rows: list[list[Any]], cls: str = "") -> str:
    """An HTML table (no header row when ``header`` is None); every cell escaped, numbers
    right-aligned. Inside a ``div.tw`` that scrolls sideways when the table is wider than
    the page (headers and text cells wrap first), so the page itself never does."""
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header or [])
    head = f"<thead><tr>{head}</tr></thead>" if header else ""
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{escape(fmt(c))}</td>' if isinstance(c, (int, float))
            and not isinstance(c, bool) else f"<td>{escape(fmt(c))}</td>" for c in row)
        + "</tr>" for row in rows)
    attr = f' class="{escape(cls)}"' if cls else ""
    return f'<div class="tw"><table{attr}>{head}<tbody>{body}</tbody></table></div>'


def _inline(v: Any) -> str:
    if _scalar(v):
        return fmt(v)
    if isinstance(v, list) and all(_scalar(x) for x in v):
        return ", ".join(fmt(x) for x in v)
    return str(v)


def render(value: Any) -> str:
    """A value as a table where its shape allows (rows of records, key/value), else a list."""
    if _scalar(value) or (isinstance(value, list) and all(_scalar(x) for x in value)):
        return f"<p>{escape(_inline(value))}</p>"
    if isinstance(value, list) and all(isinstance(x, dict) for x in value):
        flat = [_flat(x) for x in value]
        cols = list(dict.fromkeys(k for f in flat for k in f))
        return table(cols, [[f.get(c) if _scalar(f.get(c)) else _inline(f.get(c))
                             for c in cols] for f in flat])
    if isinstance(value, dict):
        if all(_scalar(v) or isinstance(v, list) and all(_scalar(x) for x in v)
               for v in value.values()):
            return table(["key", "value"], [[k, v if _scalar(v) else _inline(v)]
                                            for k, v in value.items()])
        if all(isinstance(v, dict) for v in value.values()):
            flat = {k: _flat(v) for k, v in value.items()}
            cols = list(dict.fromkeys(c for f in flat.values() for c in f))
            if all(_scalar(f.get(c)) or isinstance(f.get(c), list)
                   for f in flat.values() for c in cols):
                return table(["", *cols], [[k, *[f.get(c) if _scalar(f.get(c))
                                                  else _inline(f.get(c)) for c in cols]]
                                           for k, f in flat.items()])
        items = "".join(f"<dt>{escape(str(k))}</dt><dd>{render(v)}</dd>"
                        for k, v in value.items())
        return f"<dl>{items}</dl>"
    if isinstance(value, list):
        return "<ol>" + "".join(f"<li>{render(v)}</li>" for v in value) + "</ol>"
    return f"<p>{escape(str(value))}</p>"
