"""Object storage: one place that turns the ``s3`` settings into clients (plain Python, no Prefect).

The same :class:`~embedpipe.config.S3Settings` configure both clients that touch object storage:
Lance/LanceDB (through its ``storage_options``) for the tables, and a ``pyarrow`` S3 filesystem for
the staged shards and for reading ``s3://`` sources. Credentials left unset fall back to the standard
AWS chain in both. Secrets leave this module only inside those clients' configuration: error
messages built here are passed through :func:`redact`.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any

import pyarrow.fs as pafs

from embedpipe.config import S3Settings

S3_SCHEMES = ("s3", "s3+ddb")
"""``s3+ddb://bucket/path?ddbTableName=T`` is Lance's DynamoDB commit store over the same bucket."""


def scheme(uri: str) -> str | None:
    """The URI scheme in lower case, ``None`` for a local path."""
    head, sep, _ = uri.partition("://")
    return head.lower() if sep else None


def is_s3(uri: str) -> bool:
    return scheme(uri) in S3_SCHEMES


def normalize_s3_uri(uri: str) -> str:
    """``s3://bucket/prefix`` without a trailing slash, duplicate slashes or a query.

    Raises:
        ValueError: No bucket in the URI.
    """
    _, _, rest = uri.partition("://")
    rest = rest.split("?", 1)[0]
    parts = [p for p in rest.split("/") if p]
    if not parts:
        raise ValueError(f"no bucket in {uri!r}; expected s3://BUCKET/PREFIX")
    return "s3://" + "/".join(parts)


def fs_path(uri: str) -> str:
    """The path a pyarrow filesystem uses for ``uri``: ``bucket/key`` for S3, the path itself locally."""
    if scheme(uri) is None:
        return uri
    if is_s3(uri):
        return normalize_s3_uri(uri).removeprefix("s3://")
    return pafs.FileSystem.from_uri(uri)[1]


def lance_storage_options(s3: S3Settings) -> dict[str, str]:
    """Lance/LanceDB storage options for ``s3://`` URIs; only what is set (the rest: the AWS chain)."""
    out: dict[str, str] = {
        "connect_timeout": f"{s3.connect_timeout_s:g}s",
        "timeout": f"{s3.request_timeout_s:g}s",
    }
    if s3.endpoint:
        out["aws_endpoint"] = s3.endpoint
    if s3.allow_http:
        out["allow_http"] = "true"
    if s3.region:
        out["aws_region"] = s3.region
    if s3.access_key_id and s3.secret_access_key is not None:
        out["aws_access_key_id"] = s3.access_key_id
        out["aws_secret_access_key"] = s3.secret_access_key.get_secret_value()
        if s3.session_token is not None:
            out["aws_session_token"] = s3.session_token.get_secret_value()
    return out


def _s3_key(s3: S3Settings) -> tuple[Any, ...]:
    return (
        s3.endpoint,
        s3.region,
        s3.access_key_id,
        s3.secret_access_key.get_secret_value() if s3.secret_access_key else None,
        s3.session_token.get_secret_value() if s3.session_token else None,
        s3.connect_timeout_s,
        s3.request_timeout_s,
    )


@functools.lru_cache(maxsize=8)
def _s3_filesystem(key: tuple[Any, ...]) -> pafs.S3FileSystem:
    endpoint, region, access_key, secret, token, connect_s, request_s = key
    kwargs: dict[str, Any] = {
        "connect_timeout": connect_s,
        "request_timeout": request_s,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
    }
    if endpoint:
        scheme_, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host, scheme=scheme_)
    if region:
        kwargs["region"] = region
    elif endpoint:  # a custom store: no AWS region lookup
        kwargs["region"] = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    if access_key:
        kwargs.update(access_key=access_key, secret_key=secret, session_token=token)
    return pafs.S3FileSystem(**kwargs)


def filesystem(uri: str, s3: S3Settings) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem for ``uri`` and the path inside it (S3 configured from ``s3``).

    The S3 filesystem is cached per process and per configuration.
    """
    sch = scheme(uri)
    if sch is None:
        return pafs.LocalFileSystem(), uri
    if sch in S3_SCHEMES:
        return _s3_filesystem(_s3_key(s3)), fs_path(uri)
    return pafs.FileSystem.from_uri(uri)


def secrets_of(s3: S3Settings, extra: dict[str, Any] | None = None) -> list[str]:
    """The secret values to keep out of any message."""
    values = [s.get_secret_value() for s in (s3.secret_access_key, s3.session_token) if s is not None]
    for v in (extra or {}).values():
        raw = v.get_secret_value() if hasattr(v, "get_secret_value") else str(v)
        if len(raw) >= 4:
            values.append(raw)
    return values


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with every secret replaced by ``**********``."""
    for s in sorted(secrets, key=len, reverse=True):
        if s:
            text = text.replace(s, "**********")
    return text


_AWS_ERROR = re.compile(r"AWS Error ([A-Z_]+)[^:]*: ?([^(\n]*)")
_HTTP_STATUS = re.compile(r"status: (\d{3})")
_S3_CODE = re.compile(r"<Code>([A-Za-z]+)</Code>")
DENIED = frozenset(
    {
        "ACCESS_DENIED",
        "INVALID_ACCESS_KEY_ID",
        "SIGNATURE_DOES_NOT_MATCH",
        "UNRECOGNIZED_CLIENT",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "403",
        "401",
    }
)
MISSING_BUCKET = frozenset({"NO_SUCH_BUCKET", "NoSuchBucket"})


def explain(exc: BaseException) -> tuple[str, str]:
    """A short reason for an object-store failure of pyarrow or Lance, and its kind.

    Returns:
        ``(reason, kind)`` where kind is ``denied`` (wrong or missing credentials, no permission),
        ``no-bucket``, ``unreachable`` (endpoint down or unresolvable) or ``other``.
    """
    text = str(exc)
    codes = [m.group(1) for m in _AWS_ERROR.finditer(text)] + _S3_CODE.findall(text)
    codes += _HTTP_STATUS.findall(text)
    if any(c in MISSING_BUCKET for c in codes):
        return "the bucket does not exist", "no-bucket"
    if any(c in DENIED for c in codes):
        return (
            "access denied: the credentials are wrong, missing or lack permission (s3.access_key_id, "
            "s3.secret_access_key or the AWS credential chain)",
            "denied",
        )
    low = text.lower()
    if any(
        s in low
        for s in ("could not connect", "connection refused", "connect error", "kind: connect", "dns error")
    ) or ("network_connection" in low):
        return "cannot reach the endpoint (is the server up, s3.endpoint right?)", "unreachable"
    m = _AWS_ERROR.search(text)
    if m:
        return f"{m.group(1)}: {m.group(2).strip()}", "other"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"{type(exc).__name__}: {first[:300]}", "other"


__all__ = [
    "S3_SCHEMES",
    "explain",
    "filesystem",
    "fs_path",
    "is_s3",
    "lance_storage_options",
    "normalize_s3_uri",
    "redact",
    "scheme",
    "secrets_of",
]
