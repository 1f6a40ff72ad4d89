"""The data-team dashboard: one self-contained HTML page (plain Python, no Prefect).

The page inlines plotly.js (from the ``plotly`` package: no CDN, works offline) and shows, from
the database alone: runs over time, drift and quality checks over table versions with their
thresholds, the chunk token-length histogram with the model's limit, a 2-D map (PCA) of a sample
of the embedding space coloured by source folder with the chunk text on hover, versions and tags,
and the latest rejects.

Everything taken from documents is escaped: data goes into the page as JSON with ``<``, ``>`` and
``&`` escaped (so no ``</script>`` can end the data block), tables are built with
:func:`html.escape`, and settings are never rendered (so no secret can leak).
"""

from __future__ import annotations

import html
import json
import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pyarrow as pa

from embedpipe.resources.store import Store
from embedpipe.schemas import CHECKS_TABLE, REJECTS_TABLE, RUNS_TABLE, C, ChunkingIdentity

log = logging.getLogger(__name__)

_HOVER_CHARS = 300


@dataclass
class DashboardData:
    """Everything the page shows, read from the database."""

    table: str
    generated_at: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    seq_lengths: list[int] = field(default_factory=list)
    max_seq_length: int | None = None
    map_points: dict[str, Any] = field(default_factory=dict)
    versions: list[dict[str, Any]] = field(default_factory=list)
    served_version: int | None = None
    rejects: list[dict[str, Any]] = field(default_factory=list)
    model: str = ""


def _rows(store: Store, name: str) -> list[dict[str, Any]]:
    table = store.open_table(name)
    return table.to_arrow().to_pylist() if table is not None else []


def _pca_2d(vectors: np.ndarray) -> np.ndarray:
    centered = vectors - vectors.mean(axis=0, keepdims=True)
    if len(centered) < 2:
        return np.zeros((len(centered), 2), dtype=np.float32)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    return centered @ vt[:2].T


def collect(store: Store, sample: int = 2000, seed: int = 0) -> DashboardData:
    """Read what the dashboard shows.

    Args:
        store: The database.
        sample: Most chunks drawn (with a fixed seed) for the embedding map.
        seed: Seed of that sample.
    """
    data = DashboardData(
        table=store.settings.table, generated_at=datetime.now(UTC).isoformat(timespec="seconds")
    )
    data.runs = sorted(
        (r for r in _rows(store, RUNS_TABLE) if r.get("table") == store.settings.table),
        key=lambda r: r["started_at"],
    )
    data.checks = sorted(_rows(store, CHECKS_TABLE), key=lambda r: r.get("table_version") or 0)
    rejects = sorted(_rows(store, REJECTS_TABLE), key=lambda r: r[C.AT], reverse=True)
    data.rejects = rejects[:50]
    if store.open_table() is None:
        return data
    # The charts of the chunks show what users get: the served version (the latest when a table
    # was never published).
    chunks = store.open_version(None)
    data.served_version = int(chunks.version)
    data.versions = list(reversed(store.versions()))[:30]
    identity = store.table_identity(table=chunks)
    md = {k.decode(): v.decode() for k, v in (chunks.schema.metadata or {}).items()}
    chunking = ChunkingIdentity.from_table_metadata(md)
    special = (
        (identity.max_seq_length - chunking.budget)
        if (identity and chunking and chunking.tokens >= identity.max_seq_length)
        else 2
    )
    if identity is not None:
        data.max_seq_length = identity.max_seq_length
        data.model = identity.model_id
    ntok = chunks.search().select([C.N_TOKENS]).limit(None).to_arrow().column(C.N_TOKENS)
    data.seq_lengths = [n + special for n in ntok.to_pylist()]
    total = len(data.seq_lengths)
    if total:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(total, size=min(sample, total), replace=False))
        cols = [C.DOC_ID, C.PATH, C.TEXT, C.VECTOR]
        rows = chunks.search().select(cols).limit(None).to_arrow()
        picked = rows.take(pa.array(keep))
        vecs = np.stack(picked.column(C.VECTOR).to_numpy(zero_copy_only=False)).astype(np.float32)
        xy = _pca_2d(vecs)
        paths = picked.column(C.PATH).to_pylist()
        data.map_points = {
            "x": xy[:, 0].round(5).tolist(),
            "y": xy[:, 1].round(5).tolist(),
            "group": [p.split("/", 1)[0] if "/" in p else "(root)" for p in paths],
            "doc_id": picked.column(C.DOC_ID).to_pylist(),
            "text": [t[:_HOVER_CHARS] for t in picked.column(C.TEXT).to_pylist()],
        }
    return data


def _figures(d: DashboardData) -> dict[str, dict[str, Any]]:
    """Plotly figure specs (data + layout) per chart id."""
    figs: dict[str, dict[str, Any]] = {}
    if d.runs:
        t = [
            f"{r['started_at']:%Y-%m-%d %H:%M:%S}"
            if hasattr(r["started_at"], "strftime")
            else str(r["started_at"])
            for r in d.runs
        ]
        status_color = ["#2e7d32" if r["status"] == "completed" else "#c62828" for r in d.runs]
        figs["runs"] = {
            "data": [
                {
                    "type": "bar",
                    "name": "chunks embedded",
                    "x": t,
                    "y": [r["chunks_embedded"] for r in d.runs],
                    "marker": {"color": status_color},
                },
                {
                    "type": "scatter",
                    "mode": "lines+markers",
                    "name": "documents seen",
                    "x": t,
                    "y": [r["docs_seen"] for r in d.runs],
                },
                {
                    "type": "scatter",
                    "mode": "lines+markers",
                    "name": "chunks/s",
                    "x": t,
                    "y": [r["chunks_per_s"] for r in d.runs],
                    "yaxis": "y2",
                },
                {
                    "type": "scatter",
                    "mode": "lines+markers",
                    "name": "duration (s)",
                    "x": t,
                    "y": [r["duration_s"] for r in d.runs],
                    "yaxis": "y2",
                },
            ],
            "layout": {
                "title": {"text": "Runs over time (bars: green completed, red failed)"},
                "xaxis": {"type": "category"},
                "yaxis": {"title": {"text": "count"}},
                "yaxis2": {"title": {"text": "seconds, chunks/s"}, "overlaying": "y", "side": "right"},
                "legend": {"orientation": "h"},
            },
        }
    if d.checks:
        # One cell per (check, version): its latest status. Statistics have different scales, so
        # the chart shows verdicts; the hover text gives statistic, threshold and detail.
        codes = {"skipped": 0, "pass": 1, "warn": 2, "fail": 3, "error": 4}
        latest: dict[tuple[str, int], dict[str, Any]] = {}
        for c in sorted(d.checks, key=lambda c: str(c.get(C.AT))):
            if c.get("table_version") is not None:
                latest[(str(c["check"]), int(c["table_version"]))] = c
        names = sorted({k[0] for k in latest})
        versions = sorted({k[1] for k in latest})
        z: list[list[int | None]] = []
        hover: list[list[str]] = []
        for name in names:
            zrow: list[int | None] = []
            hrow: list[str] = []
            for v in versions:
                cell = latest.get((name, v))
                zrow.append(None if cell is None else codes.get(str(cell["status"]), 4))
                hrow.append(
                    ""
                    if cell is None
                    # escaped: details can quote doc_ids, which come from documents
                    else html.escape(
                        f"{name} @ version {v}: {cell['status']} (severity {cell['severity']}); "
                        f"statistic {_fmt(cell.get('statistic'))} vs threshold "
                        f"{_fmt(cell.get('threshold'))}. {cell.get('detail') or ''}"[:_HOVER_CHARS]
                    )
                )
            z.append(zrow)
            hover.append(hrow)
        scale = ["#bdbdbd", "#2e7d32", "#f9a825", "#c62828", "#6a1b9a"]
        figs["checks"] = {
            "data": [
                {
                    "type": "heatmap",
                    "x": [str(v) for v in versions],
                    "y": names,
                    "z": z,
                    "zmin": -0.5,
                    "zmax": 4.5,
                    "colorscale": [
                        [f, col]
                        for i, col in enumerate(scale)
                        for f in (i / len(scale), (i + 1) / len(scale))
                    ],
                    "colorbar": {
                        "tickvals": list(range(5)),
                        "ticktext": ["skipped", "pass", "warn", "fail", "error"],
                    },
                    "hovertext": hover,
                    "hoverinfo": "text",
                    "xgap": 2,
                    "ygap": 2,
                }
            ],
            "layout": {
                "title": {"text": "Checks by table version (served only when no fail-gate fails)"},
                "xaxis": {"title": {"text": "table version"}, "type": "category"},
                "yaxis": {"automargin": True, "tickfont": {"size": 10}},
                "margin": {"t": 40, "b": 40},
            },
        }
    if d.seq_lengths:
        limit = d.max_seq_length
        layout: dict[str, Any] = {
            "title": {"text": "Chunk length in tokens (special tokens included)"},
            "xaxis": {"title": {"text": "tokens"}},
            "yaxis": {"title": {"text": "chunks"}},
            "bargap": 0.05,
        }
        if limit:
            layout["shapes"] = [
                {
                    "type": "line",
                    "x0": limit,
                    "x1": limit,
                    "yref": "paper",
                    "y0": 0,
                    "y1": 1,
                    "line": {"color": "#c62828", "width": 2, "dash": "dash"},
                }
            ]
            layout["annotations"] = [
                {
                    "x": limit,
                    "yref": "paper",
                    "y": 1,
                    "text": f"model limit {limit}",
                    "showarrow": False,
                    "xanchor": "right",
                }
            ]
        figs["lengths"] = {
            "data": [{"type": "histogram", "x": d.seq_lengths, "nbinsx": 40, "name": "chunks"}],
            "layout": layout,
        }
    if d.map_points:
        p = d.map_points
        data = []
        for group in sorted(set(p["group"])):
            idx = [i for i, g in enumerate(p["group"]) if g == group]
            data.append(
                {
                    "type": "scattergl" if len(p["x"]) > 5000 else "scatter",
                    "mode": "markers",
                    "name": group,
                    "x": [p["x"][i] for i in idx],
                    "y": [p["y"][i] for i in idx],
                    # hovertext is HTML-escaped: plotly shows it as text, a <script> in a document never runs
                    "hovertext": [html.escape(f"{p['doc_id'][i]}: {p['text'][i]}") for i in idx],
                    "hoverinfo": "text",
                    "marker": {"size": 7, "opacity": 0.8},
                }
            )
        figs["map"] = {
            "data": data,
            "layout": {
                "title": {"text": "Embedding map: PCA of a sample, by source folder"},
                "xaxis": {"title": {"text": "PC1"}},
                "yaxis": {"title": {"text": "PC2"}},
                "hovermode": "closest",
            },
        }
    return figs


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{float(x):.4g}"


def _safe_json(obj: Any) -> str:
    """JSON that cannot break out of a <script> element."""
    return (
        json.dumps(obj, ensure_ascii=False, default=str)
        .replace("&", "\\u0026")
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#b8c0d0;font-size:13px}
main{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:16px;padding:16px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:12px;min-height:120px}
section h2{font-size:15px;margin:4px 4px 8px}.chart{height:380px}#chart-checks{height:460px}
table{border-collapse:collapse;width:100%;font-size:12px}th,td{text-align:left;padding:4px 6px;
border-bottom:1px solid #eee;vertical-align:top;word-break:break-word}th{background:#fafafa}
.empty{color:#777;font-style:italic;padding:8px}.served{font-weight:bold;color:#2e7d32}
"""


def render(d: DashboardData, refresh_s: int | None = None) -> str:
    """The self-contained HTML page."""
    from plotly.offline import get_plotlyjs

    figs = _figures(d)

    def chart(cid: str, title: str, empty: str) -> str:
        inner = (
            f'<div class="chart" id="chart-{cid}"></div>' if cid in figs else f'<p class="empty">{empty}</p>'
        )
        return f"<section><h2>{html.escape(title)}</h2>{inner}</section>"

    versions = (
        _table(
            ["version", "created", "tags", "run", "served"],
            [
                [
                    v["version"],
                    v["timestamp"],
                    ", ".join(v["tags"]),
                    v["run_id"] or "",
                    "serving" if v["version"] == d.served_version else "",
                ]
                for v in d.versions
            ],
        )
        if d.versions
        else '<p class="empty">No table yet.</p>'
    )
    rejects = (
        _table(["when", "path", "reason"], [[r[C.AT], r[C.PATH], r[C.REASON]] for r in d.rejects])
        if d.rejects
        else '<p class="empty">No rejects.</p>'
    )
    refresh = f'<meta http-equiv="refresh" content="{int(refresh_s)}">' if refresh_s else ""
    sub = (
        f"table {d.table} · serving version {d.served_version} · model {d.model} · "
        f"{len(d.runs)} runs · generated {d.generated_at}"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{refresh}
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>embedpipe dashboard: {html.escape(d.table)}</title><style>{_CSS}</style>
<script>{get_plotlyjs()}</script></head>
<body><header><h1>embedpipe · {html.escape(d.table)}</h1><p>{html.escape(sub)}</p></header><main>
{chart("runs", "Runs", "No runs recorded yet.")}
{chart("checks", "Drift and quality", "No checks recorded yet (the checks table is empty).")}
{chart("lengths", "Chunk token lengths", "No chunks yet.")}
{chart("map", "Embedding map", "No chunks yet.")}
<section><h2>Versions and tags</h2>{versions}</section>
<section><h2>Latest rejects</h2>{rejects}</section>
</main>
<script id="embedpipe-figures" type="application/json">{_safe_json(figs)}</script>
<script>
const figs = JSON.parse(document.getElementById("embedpipe-figures").textContent);
for (const [id, fig] of Object.entries(figs)) {{
  const layout = Object.assign({{margin: {{t: 40, l: 50, r: 50, b: 40}}}}, fig.layout);
  Plotly.newPlot("chart-" + id, fig.data, layout, {{responsive: true, displayModeBar: false}});
}}
</script></body></html>
"""


def build(store: Store, sample: int = 2000, refresh_s: int | None = None) -> str:
    """Collect and render in one call."""
    return render(collect(store, sample=sample), refresh_s=refresh_s)


def serve(
    store: Store,
    host: str = "127.0.0.1",
    port: int = 8765,
    sample: int = 2000,
    refresh_s: int = 30,
    ready: threading.Event | None = None,
) -> ThreadingHTTPServer:
    """Serve the dashboard, rebuilt on every request, on ``host`` (loopback by default).

    Returns the server (already listening); call ``serve_forever()`` on it.

    Raises:
        ConfigError: It cannot listen on ``host:port`` (the port is taken, no such address).
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path not in ("/", "/index.html"):
                self.send_error(404)
                return
            try:
                body = build(store, sample=sample, refresh_s=refresh_s).encode("utf-8")
            except Exception as e:  # the page reports the error; the server keeps serving
                log.warning("dashboard build failed: %s: %s", type(e).__name__, e)
                self.send_error(500, explain=html.escape(f"{type(e).__name__}: {e}"))
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("dashboard %s", format % args)

    from embedpipe.listen import bind_error, family

    bind_host = host.strip("[]")

    class Server(ThreadingHTTPServer):
        address_family = family(bind_host)

    try:
        server = Server((bind_host, port), Handler)
    except OSError as e:  # busy port, no such address, no permission: one line, not a traceback
        raise bind_error(host, port, e) from e
    if ready is not None:
        ready.set()
    return server
