"""Tables and escaping shared by the report's pages (Markdown and HTML)."""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def table_md(headers: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    """A Markdown table's lines (cells as `str` gives them)."""
    names = list(headers)
    return ["| " + " | ".join(names) + " |", "|" + " --- |" * len(names),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def table_html(headers: Iterable[str], rows: Iterable[Iterable[str]],
               row_classes: Iterable[str] | None = None, css_class: str = "") -> str:
    """A table whose cells are already HTML (escape text with `esc`)."""
    names = list(headers)
    head = "".join(f"<th>{esc(h)}</th>" for h in names)
    thead = f"<thead><tr>{head}</tr></thead>" if any(names) else ""
    classes = list(row_classes or [])
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if i < len(classes) and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    cls = f' class="{css_class}"' if css_class else ""
    return f"<table{cls}>{thead}<tbody>{''.join(body)}</tbody></table>"
