"""The s3 settings group and the object-store helpers: secrets stay secret, bad values say so."""

from __future__ import annotations

import pickle

import pytest

from embedpipe.config import get_settings
from embedpipe.errors import ConfigError
from embedpipe.store import Store, objectstore

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


def test_s3_settings_from_env_reach_store_and_sources_but_never_reprs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EMBEDPIPE_S3__ENDPOINT", "https://minio.internal:9000/")
    monkeypatch.setenv("EMBEDPIPE_S3__ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("EMBEDPIPE_S3__SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("EMBEDPIPE_STORE__URI", "s3://bucket/db")
    s = get_settings()
    assert s.s3.endpoint == "https://minio.internal:9000"
    assert s.store.s3 is s.s3 and s.source.s3 is s.s3
    options = Store(s.store).storage_options
    assert options["aws_secret_access_key"] == SECRET and options["aws_endpoint"] == s.s3.endpoint
    for text in (
        repr(s),
        str(s.public_dict()),
        s.model_dump_json(),
        repr(s.store),
        repr(Store(s.store).settings),
    ):
        assert SECRET not in text
    clone = pickle.loads(pickle.dumps(s.store))  # what a Dask worker gets
    assert clone.s3.secret_access_key is not None
    assert clone.s3.secret_access_key.get_secret_value() == SECRET


def test_unset_credentials_use_the_aws_chain() -> None:
    s = get_settings({"store": {"uri": "s3://bucket/db"}})
    options = Store(s.store).storage_options
    assert not {"aws_access_key_id", "aws_secret_access_key", "aws_endpoint"} & set(options)


@pytest.mark.parametrize(
    ("s3", "expected"),
    [
        ({"endpoint": "http://127.0.0.1:9000"}, "s3.allow_http"),
        ({"endpoint": "ftp://host"}, "expected an http"),
        ({"access_key_id": "AKID"}, "go together"),
        ({"secret_access_key": SECRET}, "go together"),
        ({"session_token": SECRET}, "needs s3.access_key_id"),
        ({"secret_access_key": 12345678901234}, "secret_access_key"),
    ],
)
def test_bad_s3_settings_are_config_errors_without_the_secret(s3: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        get_settings({"s3": s3})
    assert SECRET not in str(info.value) and "12345678901234" not in str(info.value)


def test_explain_and_redact() -> None:
    denied = OSError("AWS Error SIGNATURE_DOES_NOT_MATCH during ListObjectsV2 operation: nope")
    assert objectstore.explain(denied)[1] == "denied"
    assert objectstore.explain(OSError("AWS Error NO_SUCH_BUCKET during x: gone"))[1] == "no-bucket"
    assert objectstore.explain(ValueError("... status: 403, body: ..."))[1] == "denied"
    assert objectstore.explain(OSError("curlCode: 7, Could not connect to server"))[1] == "unreachable"
    assert objectstore.redact(f"key={SECRET}!", [SECRET]) == "key=**********!"
    assert objectstore.fs_path("s3+ddb://bucket/db/?ddbTableName=t") == "bucket/db"
