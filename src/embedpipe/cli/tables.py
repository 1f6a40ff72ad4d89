"""The commands that read or maintain the table outside a flow: search, versions, rollback, compact
and dashboard. None of them imports torch; search imports neither Prefect nor LanceDB on its fast path."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from embedpipe.cli.output import emit
from embedpipe.cli.parser import FLAG_OF, overrides
from embedpipe.cli.serving import prepare_prefect
from embedpipe.errors import ConfigError


def cmd_search(args: argparse.Namespace) -> int:
    """``embedpipe search``: the nearest chunks to a query."""
    from embedpipe.config import get_settings
    from embedpipe.search import Searcher, check_mode

    settings = get_settings(overrides(args), args.config, FLAG_OF)
    mode = check_mode(args.mode) if args.mode else None  # None: index.search_mode
    if args.k < 1:
        raise ConfigError(f"-k={args.k}: expected a positive number of results")
    if not args.query.strip("\x00 \t\n\r\f\v"):
        raise ConfigError("empty query: pass the text to search for, e.g. embedpipe search 'vector index'")
    # Queries are embedded with the table's own model (ONNX Runtime where its export passed the
    # query check), so they land in the same vector space; Prefect and LanceDB are not loaded.
    searcher = Searcher(settings)
    hits = searcher.search(args.query, args.k, args.search_version, mode)
    text = "\n".join(f"{h['score']:.3f}  {h['doc_id']}  {h['text'][:100]!r}" for h in hits) or "no results"
    emit(hits, args.json, text)
    if searcher.fallback:
        print(f"embedpipe: {searcher.fallback}", file=sys.stderr)
    if searcher.can_prepare:
        # After the results: this search paid for the model already; later ones need not.
        print("embedpipe: preparing the fast query path for later searches (once) ...", file=sys.stderr)
        searcher.prepare()
    return 0


def _table_lock(settings: Any, what: str) -> Any:
    """The table's run lock for a command that writes outside a flow (compact, rollback)."""
    import uuid

    from embedpipe.flows._lock import table_lock

    prepare_prefect()
    return table_lock(settings.store, str(uuid.uuid4()), what)


def cmd_versions(args: argparse.Namespace) -> int:
    """``embedpipe versions``: the table's versions with their tags."""
    from embedpipe.config import get_settings
    from embedpipe.store import Store

    settings = get_settings(overrides(args), args.config, FLAG_OF)
    rows = Store(settings.store).versions()
    text = "\n".join(f"{r['version']:>6}  {r['timestamp']}  {','.join(r['tags']) or '-'}" for r in rows)
    emit(rows, args.json, text)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """``embedpipe rollback``: restore a version or tag as the latest version."""
    from embedpipe.config import get_settings
    from embedpipe.store import Store

    settings = get_settings(overrides(args), args.config, FLAG_OF)
    Store(settings.store).require_table()  # before the lock, whose file would create the folder
    with _table_lock(settings, "rollback"):
        res = Store(settings.store).rollback(args.target, force=args.force)
    emit(
        res,
        args.json,
        f"table {res['table']}: restored version {res['restored']} as new version {res['version']}",
    )
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    """``embedpipe compact``: compact files and remove old versions by the retention policy."""
    from embedpipe.config import get_settings
    from embedpipe.store import Store

    settings = get_settings(overrides(args), args.config, FLAG_OF)
    store = Store(settings.store)
    store.require_table()
    r = settings.retention
    with _table_lock(settings, "compact"):
        report = store.apply_retention(r.keep_versions, r.max_age_hours, compact=not args.no_compact_files)
    text = "\n".join(
        f"{name}: {e['versions_before']} -> {e['versions_after']} versions, "
        f"{e['bytes_removed']} bytes removed, "
        f"{e['run_tags_dropped']} run tags dropped"
        for name, e in report.items()
    )
    emit(report, args.json, text)
    return 0


def index_text(rows: list[dict[str, Any]]) -> str:
    """The readable table of ``embedpipe index``."""
    if not rows:
        return "no indexes (searches scan exactly)"
    lines = [
        f"{'name':<16} {'column':<12} {'type':<12} {'indexed':>9} {'unindexed':>9} "
        f"{'trained@':>8} {'recall':>6}"
    ]
    for r in rows:
        recall = "-" if r["recall"] is None else f"{r['recall']:.3f}"
        trained = "-" if r["trained_at_version"] is None else str(r["trained_at_version"])
        lines.append(
            f"{r['name']:<16} {r['column']:<12} {r['type']:<12} {r['indexed_rows']!s:>9} "
            f"{r['unindexed_rows']!s:>9} {trained:>8} {recall:>6}"
        )
    return "\n".join(lines)


def cmd_index(args: argparse.Namespace) -> int:
    """``embedpipe index``: the served version's indexes; ``--rebuild`` retrains them, then checks
    the new version and serves it when its gates pass (exit 7 when they do not)."""
    from embedpipe.config import get_settings
    from embedpipe.store import Store

    settings = get_settings(overrides(args), args.config, FLAG_OF)
    store = Store(settings.store)
    store.require_table()  # before the lock, whose file would create the folder
    if not args.rebuild:
        rows = store.index_rows(store.open_version(None))
        emit(rows, args.json, index_text(rows))
        return 0
    with _table_lock(settings, "index"):
        done = store.refresh_indexes(settings.index, retrain=True, k=settings.checks.k)
    if done.version is None:
        rows = store.index_rows(store.open_version("latest"))
        emit(rows, args.json, index_text(rows))
        return 0
    for action in done.actions:
        print(f"embedpipe: {action}", file=sys.stderr)
    from embedpipe.cli.output import install_log_filter
    from embedpipe.cli.serving import flow_runs, start_prefect_server

    server = start_prefect_server()
    install_log_filter()
    from embedpipe.flows._server import served_by
    from embedpipe.flows.check import check

    with served_by(server, flow_runs):
        state = check(settings, version=str(done.version), publish=True, return_state=True)
        flow_runs.append(str(state.state_details.flow_run_id))
    checked: Any = state.result(raise_on_failure=False)
    rows = store.index_rows(store.open_version(done.version))
    emit(rows, args.json, index_text(rows))
    if getattr(checked, "gate", None) == "failed":
        from embedpipe.errors import GateFailed

        print(f"embedpipe: error: {getattr(checked, 'message', checked)}", file=sys.stderr)
        return GateFailed.exit_code
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    """``embedpipe dashboard``: write the HTML dashboard, or serve it with ``--serve``."""
    from pathlib import Path

    from embedpipe import dashboard
    from embedpipe.config import get_settings
    from embedpipe.store import Store

    settings = get_settings(overrides(args), args.config, FLAG_OF)
    store = Store(settings.store)
    store.require_database()
    if args.sample < 1:
        raise ConfigError(f"--sample={args.sample}: expected a positive number of chunks")
    if args.serve:
        from embedpipe.listen import exposure_warning, parse_port, require_exposure_allowed

        what = "the text of every chunk"
        require_exposure_allowed(args.host, args.allow_remote, what)
        server = dashboard.serve(store, host=args.host, port=parse_port(args.port), sample=args.sample)
        port = server.server_address[1]
        if warning := exposure_warning(args.host, port, what):
            print(warning, file=sys.stderr, flush=True)
        print(
            f"embedpipe: dashboard at http://{_url_host(args.host)}:{port}/ (Ctrl-C to stop)",
            file=sys.stderr,
            flush=True,
        )
        try:
            server.serve_forever()
        finally:
            server.server_close()
        return 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dashboard.build(store, sample=args.sample), encoding="utf-8")
    print(f"embedpipe: wrote {out} ({out.stat().st_size // 1024} KiB, works offline)", file=sys.stderr)
    return 0


def _url_host(host: str) -> str:
    return f"[{host.strip('[]')}]" if ":" in host else host
