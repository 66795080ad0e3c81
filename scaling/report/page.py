"""Render a report as one self-contained HTML page (figures as data URIs, inline CSS, no scripts, no
network) and as Markdown (figures as relative links to the PNG files)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass

from scaling.report.tables import Table


@dataclass(frozen=True)
class FigureOut:
    """A rendered figure: its file stem, title, how to read it, and its PNG bytes."""

    name: str
    title: str
    caption: str
    png: bytes


@dataclass(frozen=True)
class Page:
    """Everything a report page shows, already rendered to text."""

    title: str
    description: str
    status: tuple[str, ...]
    "Plain sentences about unfinished, failed or missing runs (empty: every run finished)."
    headline: tuple[str, ...]
    "What the fitted laws predict and how well they backtest."
    problems: tuple[str, ...]
    "Inputs that could not be used (unreadable fit files, figures that could not be drawn)."
    figures: tuple[FigureOut, ...]
    tables: tuple[Table, ...]
    provenance: tuple[tuple[str, str], ...]


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1a1a1a;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ccc}
.status{background:#fff4d6;border-left:4px solid #b07d00;padding:.6em 1em;margin:1em 0}
.ok{background:#e9f5ea;border-left:4px solid #2e7d32;padding:.6em 1em;margin:1em 0}
.problems{background:#fde8e8;border-left:4px solid #b71c1c;padding:.6em 1em;margin:1em 0}
figure{margin:1.5em 0}figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.92em;color:#333;margin-top:.4em}
table{border-collapse:collapse;font-size:.88em;margin:.6em 0}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f2f2f2}tr:nth-child(even) td{background:#fafafa}
footer{margin-top:2.5em;font-size:.85em;color:#444;border-top:1px solid #ccc;padding-top:.6em}
code{font-size:.95em}
"""


def _cell_html(cell) -> str:
    if isinstance(cell, tuple):
        text, href = cell
        return f'<a href="{html.escape(href, quote=True)}">{html.escape(str(text))}</a>'
    return html.escape(str(cell))


def _table_html(t: Table) -> str:
    if not t.rows:
        return f"<h2>{html.escape(t.title)}</h2>\n<p>None.</p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.head)
    body = "\n".join("<tr>" + "".join(f"<td>{_cell_html(c)}</td>" for c in row) + "</tr>" for row in t.rows)
    caption = f"<p>{html.escape(t.caption)}</p>" if t.caption else ""
    return f"<h2>{html.escape(t.title)}</h2>\n{caption}\n<table>\n<tr>{head}</tr>\n{body}\n</table>"


def _list_html(items: Sequence[str], cls: str) -> str:
    return f'<div class="{cls}"><ul>' + "".join(f"<li>{html.escape(s)}</li>" for s in items) + "</ul></div>"


def render_html(page: Page) -> str:
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(page.title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
        f"<h1>{html.escape(page.title)}</h1>",
    ]
    if page.description:
        parts.append(f"<p>{html.escape(page.description)}</p>")
    if page.status:
        parts.append("<h2>Sweep status: partial</h2>" + _list_html(page.status, "status"))
    else:
        parts.append('<div class="ok">Every run in the table finished.</div>')
    if page.problems:
        parts.append("<h2>Notes on the inputs</h2>" + _list_html(page.problems, "problems"))
    parts.append("<h2>Summary</h2>")
    if page.headline:
        parts.append("<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in page.headline) + "</ul>")
    else:
        parts.append("<p>No fit results: run <code>scaling fit</code> to get predictions and backtests.</p>")
    for fig in page.figures:
        data = base64.b64encode(fig.png).decode("ascii")
        parts.append(
            f'<h2 id="{fig.name}">{html.escape(fig.title)}</h2><figure>'
            f'<img src="data:image/png;base64,{data}" alt="{html.escape(fig.title, quote=True)}">'
            f"<figcaption>{html.escape(fig.caption)} Files: <code>figures/{fig.name}.png</code>, "
            f"<code>figures/{fig.name}.svg</code>.</figcaption></figure>"
        )
    parts.extend(_table_html(t) for t in page.tables)
    prov = "".join(f"<li>{html.escape(k)}: <code>{html.escape(v)}</code></li>" for k, v in page.provenance)
    parts.append(f"<footer><strong>Provenance</strong><ul>{prov}</ul></footer>")
    parts.extend(["</body>", "</html>"])
    return "\n".join(parts) + "\n"


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _cell_md(cell) -> str:
    if isinstance(cell, tuple):
        text, href = cell
        return f"[{_md_escape(text)}]({href})"
    return _md_escape(cell)


def _table_md(t: Table) -> str:
    lines = [f"## {t.title}", ""]
    if t.caption:
        lines += [t.caption, ""]
    if not t.rows:
        return "\n".join([*lines, "None.", ""])
    lines.append("| " + " | ".join(_md_escape(h) for h in t.head) + " |")
    lines.append("|" + "---|" * len(t.head))
    lines += ["| " + " | ".join(_cell_md(c) for c in row) + " |" for row in t.rows]
    return "\n".join([*lines, ""])


def render_markdown(page: Page) -> str:
    lines = [f"# {page.title}", ""]
    if page.description:
        lines += [page.description, ""]
    if page.status:
        lines += ["## Sweep status: partial", "", *[f"- {s}" for s in page.status], ""]
    else:
        lines += ["Every run in the table finished.", ""]
    if page.problems:
        lines += ["## Notes on the inputs", "", *[f"- {s}" for s in page.problems], ""]
    lines += ["## Summary", ""]
    lines += [f"- {s}" for s in page.headline] or ["No fit results: run `scaling fit` to get predictions."]
    lines.append("")
    for fig in page.figures:
        lines += [f"## {fig.title}", "", f"![{fig.title}](figures/{fig.name}.png)", "", fig.caption,
                  f"([SVG](figures/{fig.name}.svg))", ""]
    lines += [_table_md(t) for t in page.tables]
    lines += ["---", "", "**Provenance**", "", *[f"- {k}: `{v}`" for k, v in page.provenance], ""]
    return "\n".join(lines)
