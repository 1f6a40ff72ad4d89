"""Object storage end to end against a real S3-compatible server: moto in server mode on loopback.

The server is started by the test (no mocks of pyarrow, LanceDB or Prefect), with IAM authentication
turned on, so wrong credentials are really refused. One test drives the ``embedpipe`` command with the
real bundled model into ``s3://``; the others run in-process with the fake model.
"""

from __future__ import annotations

import json
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedpipe import cli
from embedpipe.config import Settings
from embedpipe.errors import SourceError, StoreAccessError, StoreError
from embedpipe.schemas import C
from embedpipe.sources.discover import discover
from embedpipe.sources.parse import read_documents
from embedpipe.store import RUNS_TABLE, STAGING_DIR, Store
from tests.helpers import SAMPLE_CORPUS, commit_at_once, make_settings, write
from tests.integration.test_cli import cli_env, embedpipe

pytestmark = pytest.mark.slow

BUCKET = "embedpipe-it"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    key_id: str
    secret: str
    boto: Any  # an S3 client with the admin credentials

    def settings(self, **extra: Any) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "allow_http": True,
            "region": "us-east-1",
            "access_key_id": self.key_id,
            "secret_access_key": self.secret,
            **extra,
        }

    def env(self, db: str, secret: str | None = None) -> dict[str, str]:
        return {
            "EMBEDPIPE_STORE__URI": db,
            "EMBEDPIPE_S3__ENDPOINT": self.endpoint,
            "EMBEDPIPE_S3__ALLOW_HTTP": "true",
            "EMBEDPIPE_S3__REGION": "us-east-1",
            "EMBEDPIPE_S3__ACCESS_KEY_ID": self.key_id,
            "EMBEDPIPE_S3__SECRET_ACCESS_KEY": secret or self.secret,
        }

    def keys(self, prefix: str) -> list[str]:
        out = self.boto.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return [o["Key"] for o in out.get("Contents", [])]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    """moto's S3 + IAM on 127.0.0.1, a bucket, and an IAM user; then authentication is switched on."""
    import boto3
    import requests
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boot = {"endpoint_url": endpoint, "region_name": "us-east-1"}
    root = {"aws_access_key_id": "bootstrap", "aws_secret_access_key": "bootstrap", **boot}
    iam = boto3.client("iam", **root)
    iam.create_user(UserName="embedpipe")
    policy = iam.create_policy(
        PolicyName="embedpipe-all",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        ),
    )
    iam.attach_user_policy(UserName="embedpipe", PolicyArn=policy["Policy"]["Arn"])
    key = iam.create_access_key(UserName="embedpipe")["AccessKey"]
    boto3.client("s3", **root).create_bucket(Bucket=BUCKET)
    # From here on every request must be signed by a known key with a valid signature.
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    client = boto3.client(
        "s3", aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"], **boot
    )
    try:
        yield S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], client)
    finally:
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"inf", timeout=10)
        # moto's backends are process-wide: clear the user and bucket, or the next module that
        # uses this fixture (test_vector_cache) finds them already made
        requests.post(f"{endpoint}/moto-api/reset", timeout=10)
        server.stop()


def _prefix() -> str:
    return uuid.uuid4().hex[:10]


def s3_settings(tmp_path: Path, s3: S3Server, db: str, **groups: dict[str, Any]) -> Settings:
    return make_settings(tmp_path, store={"uri": db}, s3=s3.settings(), **groups)


# --------------------------------------------------------------------------- the CLI, real model


def test_cli_sync_search_incremental_into_s3(tmp_path: Path, s3: S3Server, prefect_harness: str) -> None:
    src = tmp_path / "src"
    write(src / "embeddings.md", (SAMPLE_CORPUS / "basics" / "what-are-embeddings.md").read_text())
    write(src / "ann.md", (SAMPLE_CORPUS / "search" / "ann-indexes.md").read_text())
    write(src / "note.txt", "Lance commits each table version with a conditional put on object storage.")
    prefix = _prefix()
    db = f"s3://{BUCKET}/{prefix}/db"
    env = cli_env(prefect_harness, **s3.env(db))
    outputs: list[str] = []

    def cmd(*args: str) -> subprocess.CompletedProcess:
        res = embedpipe(*args, cwd=tmp_path, env=env)
        outputs.extend([res.stdout, res.stderr])
        assert res.returncode == 0, res.stderr
        return res

    first = json.loads(cmd("run", str(src), "--json", "--no-checks").stdout)
    # 1: the commit, 2: its full-text index
    assert first["table_version"] == 2 and first["docs_new"] == 3 and first["docs_rejected"] == 0
    assert first["chunks_written"] == first["chunks_embedded"] >= 3
    keys = s3.keys(f"{prefix}/db/")
    assert any(k.startswith(f"{prefix}/db/chunks.lance/_versions/") for k in keys)
    assert not [k for k in keys if f"/{STAGING_DIR}/" in k and k.endswith(".arrow")]  # staging cleaned up

    hits = json.loads(cmd("search", "approximate nearest neighbour index", "-k", "2", "--json").stdout)
    assert hits[0]["doc_id"] == "ann.md" and len(hits) == 2

    again = json.loads(cmd("run", str(src), "--json", "--no-checks").stdout)
    assert again["table_version"] is None and again["chunks_embedded"] == 0 and again["docs_unchanged"] == 3

    write(src / "note.txt", "Lance commits each version with a conditional put. A new second sentence.")
    edited = json.loads(cmd("run", str(src), "--json", "--no-checks").stdout)
    assert edited["table_version"] == 4 and edited["docs_changed"] == 1 and edited["docs_unchanged"] == 2
    settings = s3_settings(tmp_path, s3, db)
    versions = Store(settings.store).versions()
    assert [v["version"] for v in versions] == [1, 2, 3, 4] and versions[3]["run_id"] == edited["run_id"]

    # (c) the secret is nowhere: not in any output, the runs table, or any object the runs wrote
    assert all(s3.secret not in out for out in outputs)
    runs = Store(settings.store).require_table(RUNS_TABLE).to_arrow().to_pylist()
    assert len(runs) == 3 and s3.secret not in json.dumps(runs, default=str)
    for key in s3.keys(f"{prefix}/"):
        assert s3.secret.encode() not in s3.boto.get_object(Bucket=BUCKET, Key=key)["Body"].read(), key
    assert _prefect_logs_free_of(s3.secret, [first["run_id"], edited["run_id"]])

    # (d) wrong credentials: a one-line error with the store's exit code, no retries, no secret echoed
    wrong = "WRONG" + s3.secret[5:]
    bad = embedpipe(
        "run", str(src), "--json", cwd=tmp_path, env=cli_env(prefect_harness, **s3.env(db, wrong))
    )
    assert bad.returncode == StoreAccessError.exit_code, bad.stderr
    assert wrong not in bad.stdout + bad.stderr and not bad.stdout  # refused before the flow starts
    assert bad.stderr.startswith("embedpipe: error: cannot open database") and bad.stderr.count("\n") == 1
    assert "access denied" in bad.stderr
    assert [v["version"] for v in Store(settings.store).versions()] == [1, 2, 3, 4]  # nothing written


def _prefect_logs_free_of(secret: str, flow_run_ids: list[str]) -> bool:
    """The runs' logs as stored by the Prefect server hold no secret (and there are some)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(r) for r in flow_run_ids]))
        )
    assert logs, "expected the runs' logs on the Prefect server"
    return all(secret not in log.message for log in logs)


# --------------------------------------------------------------------------- sources on S3


def _upload(s3: S3Server, prefix: str, files: dict[str, bytes]) -> None:
    for name, body in files.items():
        s3.boto.put_object(Bucket=BUCKET, Key=f"{prefix}/{name}", Body=body)


def _parquet_bytes() -> bytes:
    sink = pa.BufferOutputStream()
    table = pa.table({"id": ["p1", "p2"], "text": ["parquet row about owls", "parquet row about moths"]})
    pq.write_table(table, sink, row_group_size=1)
    return sink.getvalue().to_pybytes()


def corpus_files() -> dict[str, bytes]:
    jsonl = "".join(
        json.dumps({"id": f"j{i}", "text": f"jsonl record {i} about rivers"}) + "\n" for i in range(40)
    )
    return {
        "a/cats.txt": b"Cats purr when they are content.\n\nThey sleep a lot.",
        "a/dogs.md": b"# Dogs\n\nDogs bark at the mail carrier.",
        "b/page.html": b"<html><body><p>Bread rises in a warm oven.</p><script>x()</script></body></html>",
        "b/records.json": json.dumps([{"id": "r1", "text": "json record about bees"}]).encode(),
        "b/rows.csv": b"id,text\nc1,csv row about stars\n",
        "b/big.jsonl": jsonl.encode(),
        "b/table.parquet": _parquet_bytes(),
        ".hidden/skip.txt": b"hidden files are excluded",
        "c/blob.txt": b"\x00\x01binary\x00",
    }


def test_sync_from_s3_sources_incremental_and_deleted(
    tmp_path: Path, s3: S3Server, prefect_harness: str
) -> None:
    from embedpipe.flows.sync import sync

    prefix = _prefix()
    _upload(s3, f"{prefix}/corpus", corpus_files())
    source = f"s3://{BUCKET}/{prefix}/corpus"
    # the database on S3 too (staging included); tiny shards split big.jsonl into ranged reads
    settings = s3_settings(
        tmp_path, s3, f"s3://{BUCKET}/{prefix}/db", runtime={"shard_mb": 0.001}, checks={"enabled": False}
    )

    def run(src: str) -> Any:
        state = sync([src], settings, return_state=True)
        summary: Any = state.result(raise_on_failure=False)
        assert state.is_completed(), summary.message
        return summary

    first = run(source + "/")  # the trailing slash is the same source
    expected_docs = 2 + 1 + 1 + 1 + 40 + 2  # txt+md, html, json, csv, jsonl records, parquet rows
    assert first.docs_new == expected_docs and first.docs_rejected == 1
    assert first.rejects[0].path == "c/blob.txt" and "binary" in first.rejects[0].reason
    table = Store(settings.store).require_table().to_arrow()
    assert set(table.column(C.SOURCE).to_pylist()) == {source}
    assert {"a/cats.txt", "b/big.jsonl#j39", "b/table.parquet#p2", "b/page.html"} <= set(
        table.column(C.DOC_ID).to_pylist()
    )
    assert not any("hidden" in d for d in table.column(C.DOC_ID).to_pylist())
    assert "x()" not in " ".join(table.column(C.TEXT).to_pylist())

    again = run(source)
    assert again.table_version is None and again.chunks_embedded == 0
    assert again.docs_unchanged == expected_docs

    s3.boto.delete_object(Bucket=BUCKET, Key=f"{prefix}/corpus/a/dogs.md")
    _upload(s3, f"{prefix}/corpus", {"a/cats.txt": b"Cats purr when content.\n\nThey chase string."})
    third = run(source)
    assert third.table_version == first.table_version + 1
    assert (third.docs_deleted, third.docs_changed, third.docs_new) == (1, 1, 0)
    doc_ids = set(Store(settings.store).require_table().to_arrow().column(C.DOC_ID).to_pylist())
    assert "a/dogs.md" not in doc_ids and "a/cats.txt" in doc_ids


def test_object_deleted_between_listing_and_reading_is_a_reject(tmp_path: Path, s3: S3Server) -> None:
    prefix = _prefix()
    _upload(s3, f"{prefix}/src", {"one.txt": b"first document", "two.txt": b"second document"})
    settings = s3_settings(tmp_path, s3, str(tmp_path / "db"))
    refs, rejects = discover([f"s3://{BUCKET}/{prefix}/src"], settings.source, split_bytes=1 << 20)
    assert [r.path for r in refs] == ["one.txt", "two.txt"] and not rejects
    s3.boto.delete_object(Bucket=BUCKET, Key=f"{prefix}/src/two.txt")
    docs, rejects, seen = read_documents(refs, settings.source)
    assert docs.column(C.DOC_ID).to_pylist() == ["one.txt"] and seen == 2
    assert [r.path for r in rejects] == ["two.txt"] and "no longer exists" in rejects[0].reason


# --------------------------------------------------------------------------- bad input


def test_bad_s3_sources_are_one_line_source_errors(tmp_path: Path, s3: S3Server) -> None:
    prefix = _prefix()
    _upload(s3, f"{prefix}/src", {"one.txt": b"a document"})
    settings = s3_settings(tmp_path, s3, str(tmp_path / "db"))
    cases = {
        f"s3://{BUCKET}/{prefix}/nothing-here": "holds no objects",
        f"s3://no-such-bucket-{prefix}/x": "bucket does not exist",
        f"s3://no-such-bucket-{prefix}": "bucket does not exist",
    }
    for source, reason in cases.items():
        with pytest.raises(SourceError, match=reason) as info:
            discover([source], settings.source, split_bytes=1 << 20)
        assert source in str(info.value) and "\n" not in str(info.value)
    wrong = make_settings(tmp_path, s3=s3.settings(secret_access_key="WRONG" + s3.secret[5:]))
    with pytest.raises(SourceError, match="access denied") as info:
        discover([f"s3://{BUCKET}/{prefix}/src"], wrong.source, split_bytes=1 << 20)
    assert s3.secret[5:] not in str(info.value)


def test_bad_s3_database_is_a_one_line_store_error(
    tmp_path: Path, s3: S3Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def versions(db: str, **s3_env: str) -> tuple[int, str]:
        for k, v in {**s3.env(db), **s3_env}.items():
            monkeypatch.setenv(k, v)
        code = cli.main(["versions", "--json"])
        return code, capsys.readouterr().err

    errors = []
    code, err = versions(f"s3://no-such-bucket-{_prefix()}/db")
    assert code == StoreAccessError.exit_code and "bucket does not exist" in err
    errors.append(err)
    code, err = versions(f"s3://{BUCKET}/{_prefix()}/db", EMBEDPIPE_S3__SECRET_ACCESS_KEY="not-the-secret")
    assert code == StoreAccessError.exit_code and "access denied" in err and "not-the-secret" not in err
    errors.append(err)
    code, err = versions(f"s3://{BUCKET}/x/db", EMBEDPIPE_S3__ENDPOINT=f"http://127.0.0.1:{_free_port()}")
    assert code == StoreError.exit_code and "cannot reach the endpoint" in err
    errors.append(err)
    code, err = versions(f"s3://{BUCKET}/x/db", EMBEDPIPE_S3__ALLOW_HTTP="false")
    assert code == 2 and "s3.allow_http" in err
    errors.append(err)
    for e in errors:
        assert e.count("\n") == 1 and e.startswith("embedpipe: error: ") and "Traceback" not in e, e


# --------------------------------------------------------------------------- concurrent writers


def test_store_refuses_overwriting_a_manifest(s3: S3Server) -> None:
    """What Lance's commit relies on: a PUT with If-None-Match: * fails when the object exists."""
    from botocore.exceptions import ClientError

    key = f"{_prefix()}/_versions/1.manifest"
    s3.boto.put_object(Bucket=BUCKET, Key=key, Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError, match="PreconditionFailed"):
        s3.boto.put_object(Bucket=BUCKET, Key=key, Body=b"second", IfNoneMatch="*")
    assert s3.boto.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"first"


def test_concurrent_commits_to_one_s3_table_all_land(tmp_path: Path, s3: S3Server) -> None:
    from embedpipe.chunking import chunk_documents
    from embedpipe.embedding.embedder import get_embedder
    from embedpipe.tasks.embedding import embed_chunks, table_schema

    prefix = _prefix()
    writers = 4
    files = {
        f"w{w}/d{i}.txt": f"Writer {w} document {i}. ".encode() * 20 for w in range(writers) for i in range(3)
    }
    _upload(s3, f"{prefix}/src", files)
    settings = s3_settings(tmp_path, s3, f"s3://{BUCKET}/{prefix}/db")
    embedder = get_embedder(settings.model)
    schema = table_schema(embedder, settings)
    store = Store(settings.store)
    runs = [str(uuid.UUID(int=w + 1)) for w in range(writers + 1)]
    staged = {}
    for w, rid in enumerate(runs):
        refs, _ = discover([f"s3://{BUCKET}/{prefix}/src/w{w % writers}"], settings.source, 1 << 20)
        docs, _, _ = read_documents(refs, settings.source)
        chunks, _ = chunk_documents(docs, embedder.tokenizer, 64, 4)
        table, *_ = embed_chunks(chunks, embedder, 16, rid, schema)
        staged[rid] = [store.stage(rid, 0, table)]
    first = runs.pop()  # writer 0's documents again: the table exists before the race
    store.commit(first, staged[first], schema)
    errors = commit_at_once(settings, {r: staged[r] for r in runs}, schema)
    assert not errors, errors
    versions = Store(settings.store).versions()
    tagged = {v["run_id"]: v["version"] for v in versions if v["run_id"]}
    # every commit is its own version (none overwrote another's manifest) ...
    assert len(versions) == writers + 1 and len(set(tagged.values())) == len(tagged) == writers + 1
    # ... and every writer's rows are there, once
    table = Store(settings.store).require_table().to_arrow()
    ids = table.column(C.CHUNK_ID).to_pylist()
    assert len(ids) == len(set(ids))
    sources = {f"s3://{BUCKET}/{prefix}/src/w{w}" for w in range(writers)}
    assert set(table.column(C.SOURCE).to_pylist()) == sources
    assert table.num_rows == sum(staged[r][0].rows for r in runs)
