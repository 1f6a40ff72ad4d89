"""The ``embedpipe`` argument parser, and the settings overrides its flags make.

``run`` and ``reindex`` write a new table version through a flow, so they share one builder
(:func:`_add_writer`) for the store, model, check, runtime and ``--json`` options and differ only in
where their documents come from.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from embedpipe import __version__
from embedpipe.errors import ConfigError

DESCRIPTION = "The ``embedpipe`` command line: parse, load settings, call a flow or the store, map errors."

_FLAGS: dict[str, tuple[str, str]] = {
    # dest: (setting path, flag) of every flag that overrides a setting
    "keep_versions": ("retention.keep_versions", "--keep-versions"),
    "max_age_hours": ("retention.max_age_hours", "--older-than-hours"),
    "db": ("store.uri", "--db"),
    "table": ("store.table", "--table"),
    "model": ("model.name", "--model"),
    "device": ("model.device", "--device"),
    "batch_size": ("model.batch_size", "--batch-size"),
    "backend": ("model.backend", "--backend"),
    "precision": ("model.precision", "--precision"),
    "batch_tokens": ("model.batch_tokens", "--batch-tokens"),
    "chunk_tokens": ("chunk.tokens", "--chunk-tokens"),
    "chunk_overlap": ("chunk.overlap", "--chunk-overlap"),
    "golden": ("checks.golden", "--golden"),
    "baseline": ("checks.baseline_tag", "--baseline"),
    "no_checks": ("checks.enabled", "--no-checks"),
    "include": ("source.include", "--include"),
    "exclude": ("source.exclude", "--exclude"),
    "text_field": ("source.text_field", "--text-field"),
    "id_field": ("source.id_field", "--id-field"),
    "max_file_mb": ("source.max_file_mb", "--max-file-mb"),
    "max_reject_ratio": ("source.max_reject_ratio", "--max-reject-ratio"),
    "runner": ("runtime.runner", "--runner"),
    "dask_address": ("runtime.dask_address", "--dask-address"),
    "workers": ("runtime.dask_workers", "--workers"),
}
FLAG_OF = {path: flag for path, flag in _FLAGS.values()}
"""The flag of each setting path, so that a settings error names the flag that set it."""


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the flags of ``args`` set, as nested groups (``runtime`` is left to
    :func:`runtime_overrides`)."""
    out: dict[str, Any] = {}
    for dest, (path, _) in _FLAGS.items():
        value = getattr(args, dest, None)
        if dest == "no_checks":
            value = False if value else None
        if value is not None and not dest.startswith(("runner", "dask_", "workers")):
            group, key = path.split(".")
            out.setdefault(group, {})[key] = value
    return out


def runtime_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``--runner``, ``--dask-address`` and ``--workers``; either of the last two implies dask."""
    runner = getattr(args, "runner", None)
    address, workers = getattr(args, "dask_address", None), getattr(args, "workers", None)
    given = [f for f, v in (("--dask-address", address), ("--workers", workers)) if v is not None]
    if given and runner == "local":
        raise ConfigError(f"{' and '.join(given)} need --runner dask (got --runner local)")
    if len(given) == 2:
        raise ConfigError(
            "--dask-address and --workers exclude each other: connect to an existing cluster, "
            "or start a local one of N workers"
        )
    if given and runner is None:
        runner = "dask"
    return {"runtime": {"runner": runner, "dask_address": address, "dask_workers": workers}}


def _runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--runner",
        choices=["local", "dask"],
        help="local (default): this process; dask: shards on Dask workers",
    )
    p.add_argument(
        "--dask-address", dest="dask_address", help="scheduler of an existing Dask cluster (tcp://host:port)"
    )
    p.add_argument(
        "--workers", type=int, help="worker processes of a local Dask cluster (default: one per GPU)"
    )


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="LanceDB database URI (default ./.embedpipe/db)")
    p.add_argument("--table", help="table name (default chunks)")
    p.add_argument("--config", help="TOML settings file (default ./embedpipe.toml)")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="sentence-transformers model id or local path")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--batch-size", type=int, dest="batch_size", help="most chunks per forward pass")
    p.add_argument(
        "--backend",
        choices=["auto", "torch", "onnx", "onnx-int8", "openvino"],
        help="inference backend (default auto: for a new table the fastest installed one that passes "
        "the quality guard against torch; an existing table keeps its own); part of the model "
        "identity: switching it is a reindex",
    )
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], help="compute precision")
    p.add_argument("--batch-tokens", type=int, dest="batch_tokens", help="padded tokens per batch")
    p.add_argument("--chunk-tokens", type=int, dest="chunk_tokens")
    p.add_argument("--chunk-overlap", type=int, dest="chunk_overlap")


def _check_args(p: argparse.ArgumentParser, writes: bool) -> None:
    p.add_argument(
        "--golden", action="append", help="golden-set JSONL file checked through search (repeatable)"
    )
    p.add_argument("--baseline", help="compare with this tag or version instead of the served version")
    if writes:
        p.add_argument(
            "--no-checks",
            action="store_true",
            dest="no_checks",
            help="serve the new version without checking it (checks.enabled=false)",
        )


def _add_writer(
    sub: Any, name: str, summary: str, sources: Callable[[argparse.ArgumentParser], None]
) -> argparse.ArgumentParser:
    """``run`` or ``reindex``: the options both have, around ``sources``, the options of their own."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=summary)
    _store_args(p)
    _model_args(p)
    sources(p)
    _check_args(p, writes=True)
    _runtime_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object with the run summary")
    return p


def _run_sources(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="folders or files to read")
    p.add_argument("--include", action="append", help="glob of files to read (repeatable)")
    p.add_argument("--exclude", action="append", help="glob of files to skip (repeatable)")
    p.add_argument("--text-field", dest="text_field")
    p.add_argument("--id-field", dest="id_field")
    p.add_argument("--max-file-mb", type=float, dest="max_file_mb")
    p.add_argument("--max-reject-ratio", type=float, dest="max_reject_ratio")
    p.add_argument(
        "--no-delete",
        action="store_true",
        dest="no_delete",
        help="keep the chunks of documents that disappeared from the sources",
    )


def _reindex_sources(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--source",
        action="append",
        dest="reindex_sources",
        help="re-read this source instead of reusing stored chunk texts (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of every ``embedpipe`` command and option."""
    parser = argparse.ArgumentParser(
        prog="embedpipe",
        description=DESCRIPTION,
        epilog="exit status: 0 ok; 1 other failure; 2 bad setting or source; 3 model; 4 store; "
        "5 model or chunking mismatch; 6 too many rejects; 7 a check gate failed; 8 another run "
        "holds the table's lock past store.lock_timeout_s, or wrote the table meanwhile (nothing written); "
        "9 serve could not start or reach its Prefect server",
    )
    parser.add_argument("--version", action="version", version=f"embedpipe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_writer(sub, "run", "sync documents into the chunks table (one new version)", _run_sources)
    _add_writer(
        sub,
        "reindex",
        "rebuild the table with another model or chunking, then switch to it atomically",
        _reindex_sources,
    )

    check = sub.add_parser(
        "check", help="run the drift and quality checks on a version (and publish it with --publish)"
    )
    _store_args(check)
    check.add_argument(
        "--version",
        dest="check_version",
        default="latest",
        help="latest (default), serving, a version number or a tag",
    )
    check.add_argument("--publish", action="store_true", help="serve the version if its gates pass")
    check.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    _check_args(check, writes=False)
    check.add_argument("--json", action="store_true", help="print one JSON object with the report")

    compact = sub.add_parser(
        "compact", help="compact small files and remove old versions by the retention policy"
    )
    _store_args(compact)
    compact.add_argument(
        "--keep-versions", type=int, dest="keep_versions", help="always keep the last N versions"
    )
    compact.add_argument(
        "--older-than-hours", type=float, dest="max_age_hours", help="remove only versions older than this"
    )
    compact.add_argument("--no-compact-files", action="store_true", dest="no_compact_files")
    compact.add_argument("--json", action="store_true")

    search = sub.add_parser("search", help="nearest chunks to a query")
    search.add_argument("query")
    _store_args(search)
    search.add_argument("-k", type=int, default=5, help="results (default 5)")
    search.add_argument(
        "--version",
        dest="search_version",
        default="serving",
        help="serving (default: the version that passed its checks), latest, a number or a tag",
    )
    search.add_argument(
        "--mode",
        choices=("vector", "text", "hybrid"),
        help="vector (score: cosine similarity), text (BM25 over the full-text index; score: BM25) "
        "or hybrid (reciprocal rank fusion of both; score: RRF); default index.search_mode",
    )
    search.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    search.add_argument("--json", action="store_true")

    versions = sub.add_parser("versions", help="list table versions with tags and run ids")
    _store_args(versions)
    versions.add_argument("--json", action="store_true")

    dash = sub.add_parser("dashboard", help="write (or serve) the self-contained HTML dashboard")
    _store_args(dash)
    dash.add_argument("--out", default="embedpipe-dashboard.html", help="HTML file to write")
    dash.add_argument("--serve", action="store_true", help="serve the page (rebuilt per request) instead")
    dash.add_argument("--host", default="127.0.0.1", help="address to bind with --serve (default loopback)")
    dash.add_argument("--port", default="8765", help="port for --serve (default 8765; 0: any free one)")
    dash.add_argument(
        "--allow-remote",
        action="store_true",
        dest="allow_remote",
        help="let --host be a non-loopback address (document text becomes visible to that network)",
    )
    dash.add_argument("--sample", type=int, default=2000, help="chunks drawn for the embedding map")

    index = sub.add_parser(
        "index", help="list the table's indexes (vector, full-text, scalar); --rebuild retrains them"
    )
    index.add_argument(
        "--rebuild",
        action="store_true",
        help="retrain the vector index and rebuild the full-text one now, then check and serve the result",
    )
    _store_args(index)
    index.add_argument("--json", action="store_true", help="print the indexes as one JSON list")

    rollback = sub.add_parser("rollback", help="restore a version or tag as the latest version, and serve it")
    rollback.add_argument("target", help="version number or tag (a run id)")
    rollback.add_argument(
        "--force", action="store_true", help="roll back even to a version that failed its checks"
    )
    _store_args(rollback)
    rollback.add_argument("--json", action="store_true")

    serve = sub.add_parser(
        "serve", help="serve the deployments of deploy/prefect.yaml with their schedules from this process"
    )
    serve.add_argument("--file", help="prefect.yaml to read (default deploy/prefect.yaml)")
    serve.add_argument(
        "--only", action="append", metavar="NAME", help="serve only this deployment (repeatable)"
    )
    serve.add_argument("--limit", type=int, help="most flow runs at the same time (default Prefect's)")
    serve.add_argument(
        "--port",
        default="4200",
        help="port of the local Prefect server started when PREFECT_API_URL is unset (default 4200)",
    )
    return parser
