"""HTML for report pages and run indexes: self-contained (inline CSS, JS, data: URIs), no network.

Rendering only: the data comes from `xattr.report.data` (a page) and `xattr.report.run`
(an index). The interactive parts are drawn in the browser by ``assets/report.js`` from the
page's JSON, embedded in a ``<script type="application/json">`` element.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from functools import cache
from html import escape
from importlib import resources
from typing import Any

Table = tuple[Sequence[str], Sequence[Sequence[Any]]]  # column names, rows of cells


@cache
def asset(name: str) -> str:
    """The text of ``assets/<name>`` (the page's CSS and JS), read once."""
    return resources.files("xattr.report").joinpath("assets", name).read_text(encoding="utf-8")


def render_page(
    page: Mapping[str, Any],
    nav: Sequence[tuple[str, str]] = (),
    tables: Sequence[tuple[str, Table]] = (),
) -> str:
    """One explanation page: the image and maps, question words, answer tokens, plots.

    ``nav`` adds (label, href) links under the title, ``tables`` (heading, table) sections.
    """
    data = dict(page)
    image = dict(data.pop("image"))
    src = image.pop("src")
    data["image"] = image
    sources = [src]
    if "images" in data:  # several images: each in its own <img>, once
        shown = [dict(im) for im in data.pop("images")]
        sources = [im.pop("src") for im in shown]
        data["images"] = shown
    meta = " · ".join(
        x
        for x in (
            f"answer: {page.get('answer_source') or 'n/a'}",
            f"model: {page['model']}" if page.get("model") else "",
            f"methods: {', '.join(m['name'] for m in page['methods'])}",
        )
        if x
    )
    body = f"""
<header>
  <h1>{escape(str(page["title"]))}</h1>
  <div class="meta">{escape(meta)}</div>
  {_nav(nav)}
</header>
<main>
  <section class="panel viewer">
    <div class="toolbar">
      <div class="methods" id="methods" role="group" aria-label="method"></div>
      <label class="opacity">map opacity
        <input id="opacity" type="range" min="0" max="100" value="50"><span id="opacity-value"></span>
      </label>
    </div>
    {_stages(sources, page.get("picture", "image"))}
    <div id="caption"></div>
    <div id="references-box" hidden><h2>Scored against</h2><div class="strip" id="references"></div></div>
  </section>
  <section class="panel side">
    <h2>Question</h2>
    <div class="words" id="question"></div>
    <div class="muted" id="question-note"></div>
    <h2>Answer</h2>
    <div class="tokens" id="answer"></div>
    <div class="tokens" id="spans" hidden></div>
    <div class="muted"><span id="answer-note"></span> ·
      <button class="link" id="holistic" type="button">back to the holistic map</button></div>
    <ul class="warnings" id="warnings"></ul>
    <div id="weights-box">
      <h2>Layers</h2>
      <svg id="layer-plot" role="img" aria-label="layer weights"></svg>
      <div id="layers-box"><div class="strip" id="layers"></div></div>
    </div>
    <div id="heads-box">
      <h2>Heads</h2>
      <svg id="head-plot" role="img" aria-label="head weights"></svg>
    </div>
  </section>
  {"".join(_table_section(h, t) for h, t in tables)}
</main>
<script type="application/json" id="xattr-data">{script_json(data)}</script>
<script>{asset("report.js")}</script>"""
    return _document(str(page["title"]), body)


def render_index(
    title: str,
    results: Table,
    samples: Table,
    notes: Sequence[str] = (),
    subtitle: str = "",
) -> str:
    """A run's index: the results table, notes (warnings, skips) and a filterable sample list.

    Cells of ``samples`` given as ``(text, href)`` become links.
    """
    note_list = "".join(f"<li>{escape(n)}</li>" for n in notes)
    body = f"""
<header>
  <h1>{escape(title)}</h1>
  <div class="meta">{escape(subtitle)}</div>
</header>
<main>
  <section class="panel wide">
    <h2>Results</h2>
    {render_table(*results)}
    {f'<ul class="warnings">{note_list}</ul>' if notes else ""}
  </section>
  <section class="panel wide">
    <h2>Samples ({len(samples[1])})</h2>
    <input type="search" id="filter" placeholder="filter samples (id, question, answer)">
    {render_table(*samples, table_id="samples")}
  </section>
</main>
<script>{_FILTER_JS}</script>"""
    return _document(title, body)


def render_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], table_id: str = "") -> str:
    """A plain HTML table; numbers right-aligned, ``(text, href)`` cells as links."""
    head = "".join(f"<th>{escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    ident = f' id="{escape(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def script_json(data: Any) -> str:
    """JSON safe inside a ``<script>`` element: no ``</``, non-finite floats as null."""
    return json.dumps(_finite(data), separators=(",", ":")).replace("</", "<\\/")


_FILTER_JS = """
document.getElementById("filter").addEventListener("input", (e) => {
  const q = e.target.value.toLowerCase();
  for (const tr of document.querySelectorAll("#samples tbody tr"))
    tr.hidden = q && !tr.textContent.toLowerCase().includes(q);
});"""


def _document(title: str, body: str) -> str:
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{asset("report.css")}</style>
</head>
<body>{body}
</body>
</html>
"""


def _stages(sources: Sequence[str], picture: str = "image") -> str:
    """The image(s) with a canvas over each for the map; several images (or a video's frames,
    ``picture`` "frame") each get a caption (its number and share of the relevance, filled in
    by the page's script); frames also a play button that steps through them."""
    if len(sources) == 1:
        return f"""<div class="stage" id="stage">
      <img id="base" alt="input image" src="{sources[0]}">
      <canvas id="heat"></canvas>
    </div>"""
    figures = "".join(
        f"""
      <figure class="image-box">
        <div class="stage" id="stage-{k}">
          <img alt="input {picture} {k + 1}" src="{src}">
          <canvas id="heat-{k}" data-image="{k}"></canvas>
        </div>
        <figcaption class="share" id="share-{k}">{picture} {k + 1}</figcaption>
      </figure>"""
        for k, src in enumerate(sources)
    )
    play = (
        '<button type="button" id="play" title="step through the frames">▶ play</button>\n    '
        if picture == "frame"
        else ""
    )
    return f'{play}<div class="images" id="images">{figures}\n    </div>'


def _nav(links: Sequence[tuple[str, str]]) -> str:
    if not links:
        return ""
    items = "".join(f'<a href="{escape(href)}">{escape(label)}</a>' for label, href in links)
    return f'<nav class="pager">{items}</nav>'


def _table_section(heading: str, table: Table) -> str:
    return f'<section class="panel wide"><h2>{escape(heading)}</h2>{render_table(*table)}</section>'


def _cell(value: Any) -> str:
    if isinstance(value, tuple) and len(value) == 2:
        text, href = value
        return f'<td><a href="{escape(str(href))}">{escape(str(text))}</a></td>'
    if isinstance(value, bool) or value is None:
        return f"<td>{'' if value is None else escape(str(value))}</td>"
    if isinstance(value, (int, float)):
        text = "n/a" if isinstance(value, float) and not math.isfinite(value) else f"{value:.4g}"
        return f'<td class="num">{text}</td>'
    return f"<td>{escape(str(value))}</td>"


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
