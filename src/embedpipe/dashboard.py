"""The data-team dashboard: one self-contained HTML page (plain Python, no Prefect).

The page inlines plotly.js (from the ``plotly`` package: no CDN, works offline) and shows, from
the database alone: runs over time, drift and quality checks over table versions with their
thresholds, the chunk token-length histogram with the model's limit, a 2-D map (PCA) of a sample
of the embedding space coloured by source folder with the chunk text on hover, versions and tags,
and the latest rejects.

The page is the Jinja2 template ``templates/dashboard.html`` with autoescape on, so everything
taken from documents is escaped by construction: tables and headings are escaped HTML, the figures
go in as JSON through ``tojson`` (``<``, ``>``, ``&`` and ``'`` escaped, so no ``</script>`` can end
the data block), hover texts are escaped once more for plotly, and settings are never rendered (so
no secret can leak).
"""

from __future__ import annotations

import functools
import html
import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jinja2
import numpy as np
import pyarrow as pa

from embedpipe.checks.registry import CHECKS
from embedpipe.schemas import CHECKS_TABLE, REJECTS_TABLE, RUNS_TABLE, C, ChunkingIdentity
from embedpipe.store import Store

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
    indexes: list[dict[str, Any]] = field(default_factory=list)
    """The served version's indexes: the rows of ``embedpipe index``."""
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
    data.indexes = store.index_rows(chunks)
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
        # Rows in the check registry's order (families together; a name it no longer knows after
        # them), reversed because plotly draws the first row at the bottom.
        order = {name: i for i, name in enumerate(CHECKS)}
        names = sorted({k[0] for k in latest}, key=lambda n: (order.get(n, len(order)), n))[::-1]
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


@functools.cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("embedpipe", "templates"),
        autoescape=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    # ``tojson`` sorts keys by default; keep the figures in the order they were built. Non-ASCII
    # text is written as \u escapes, so U+2028/U+2029 cannot end a line of the data block either.
    env.policies["json.dumps_kwargs"] = {"sort_keys": False, "default": str}
    return env.get_template("dashboard.html")


def render(d: DashboardData, refresh_s: int | None = None) -> str:
    """The self-contained HTML page, from the package's ``templates/dashboard.html``.

    The template autoescapes every value (document text, paths, reasons, the table name); the
    figures go into a ``<script type="application/json">`` block through ``tojson``, which escapes
    ``<``, ``>``, ``&`` and ``'``. Only plotly.js itself, from the plotly package, is inserted as is.
    """
    from plotly.offline import get_plotlyjs

    versions = [
        [
            v["version"],
            v["timestamp"],
            ", ".join(v["tags"]),
            v["run_id"] or "",
            "serving" if v["version"] == d.served_version else "",
        ]
        for v in d.versions
    ]
    rejects = [[r[C.AT], r[C.PATH], r[C.REASON]] for r in d.rejects]
    indexes = [
        [
            i["name"],
            i["column"],
            i["type"],
            ", ".join(f"{k}={v}" for k, v in sorted(i["params"].items()) if v is not None),
            i["indexed_rows"],
            i["unindexed_rows"],
            "" if i["trained_at_version"] is None else i["trained_at_version"],
            "" if i["recall"] is None else f"{i['recall']:.3f}",
        ]
        for i in d.indexes
    ]
    return _template().render(
        d=d,
        figs=_figures(d),
        versions=versions,
        indexes=indexes,
        rejects=rejects,
        refresh_s=int(refresh_s) if refresh_s else None,
        plotlyjs=get_plotlyjs(),
    )


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
