"""Settings: precedence (flags > env > TOML > defaults), nesting, secrets and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedpipe.config import get_settings
from embedpipe.errors import ConfigError


def test_defaults() -> None:
    s = get_settings()
    assert s.store.uri == ".embedpipe/db"
    assert s.store.table == "chunks"
    assert s.model.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert s.model.normalize is True
    assert s.chunk.tokens == 256 and s.chunk.overlap == 32


def test_precedence_flags_over_env_over_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "embedpipe.toml").write_text(
        '[model]\nbatch_size = 8\nname = "from-toml"\n[store]\ntable = "toml_table"\nuri = "toml-db"\n'
    )
    monkeypatch.setenv("EMBEDPIPE_MODEL__BATCH_SIZE", "16")
    monkeypatch.setenv("EMBEDPIPE_STORE__TABLE", "env_table")
    s = get_settings({"store": {"table": "flag_table"}})
    assert s.store.table == "flag_table"  # flag beats env and TOML
    assert s.model.batch_size == 16  # env beats TOML
    assert s.model.name == "from-toml"  # TOML beats default
    assert s.store.uri == "toml-db"
    assert s.chunk.tokens == 256  # default


def test_config_file_from_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "other.toml"
    cfg.write_text("[chunk]\ntokens = 128\noverlap = 16\n")
    monkeypatch.setenv("EMBEDPIPE_CONFIG", str(cfg))
    s = get_settings()
    assert (s.chunk.tokens, s.chunk.overlap) == (128, 16)


def test_none_overrides_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDPIPE_MODEL__DEVICE", "cpu")
    s = get_settings({"model": {"device": None, "batch_size": None}})
    assert s.model.device == "cpu"
    assert s.model.batch_size == 64


@pytest.mark.parametrize(
    ("overrides", "env", "needle"),
    [
        ({"model": {"batch_size": 0}}, {}, "model.batch_size (get_settings override)"),
        ({}, {"EMBEDPIPE_MODEL__BATCH_SIZE": "lots"}, "model.batch_size"),
        ({"model": {"device": "tpu"}}, {}, "model.device"),
        ({"chunk": {"tokens": 64, "overlap": 40}}, {}, "chunk.overlap=40"),
        ({"source": {"max_reject_ratio": 1.5}}, {}, "source.max_reject_ratio"),
        ({"store": {"table": "../escape"}}, {}, "store.table"),
        ({}, {"EMBEDPIPE_SOURCE__MAX_FILE_MB": "-1"}, "source.max_file_mb"),
    ],
)
def test_wrong_value_names_the_setting(
    overrides: dict, env: dict, needle: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as exc:
        get_settings(overrides)
    assert needle in str(exc.value)


def test_unknown_setting_in_toml_is_refused(tmp_path: Path) -> None:
    (tmp_path / "embedpipe.toml").write_text("[model]\nbatchsize = 8\n")
    with pytest.raises(ConfigError, match=r"model\.batchsize"):
        get_settings()


def test_malformed_toml_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "embedpipe.toml").write_text("[model\nname = \n")
    with pytest.raises(ConfigError, match=r"embedpipe\.toml"):
        get_settings()


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        get_settings(config_file=tmp_path / "nope.toml")


def test_secrets_never_appear_in_dumps_or_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDPIPE_STORE__STORAGE_OPTIONS", '{"aws_secret_access_key": "hunter2-very-secret"}')
    s = get_settings()
    assert s.store.storage_options["aws_secret_access_key"].get_secret_value() == "hunter2-very-secret"
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s.public_dict())
    assert "hunter2" not in s.model_dump_json()


def test_empty_toml_means_defaults(tmp_path: Path) -> None:
    (tmp_path / "embedpipe.toml").write_text("")
    assert get_settings().model.batch_size == 64


def test_wrongly_encoded_toml_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "embedpipe.toml").write_bytes('[store]\ntable = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"embedpipe\.toml"):
        get_settings()


def test_huge_and_hostile_values_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"store\.table"):
        get_settings({"store": {"table": "x" * 10_000}})
    with pytest.raises(ConfigError, match=r"store\.table"):
        get_settings({"store": {"table": "chunks; DROP TABLE runs"}})
    with pytest.raises(ConfigError, match=r"model\.batch_size"):
        get_settings({"model": {"batch_size": 10**12}})


# Every settings error names the setting path and its source (issue 13, repro 9): the flag, the
# environment variable, or the file and key.


@pytest.mark.parametrize(
    ("var", "value", "needles"),
    [
        # before: 'cannot read settings from config file None: error parsing value for field "source"
        # from source "EnvSettingsSource"'
        (
            "EMBEDPIPE_SOURCE__INCLUDE",
            "notalist",
            ["source.include (env EMBEDPIPE_SOURCE__INCLUDE)", "JSON list"],
        ),
        (
            "EMBEDPIPE_MODEL__BATCH_SIZE",
            "many",
            ["model.batch_size (env EMBEDPIPE_MODEL__BATCH_SIZE)", "'many'"],
        ),
        (
            "EMBEDPIPE_MODEL__NORMALIZE",
            "maybe",
            ["model.normalize (env EMBEDPIPE_MODEL__NORMALIZE)", "boolean"],
        ),
        (
            "EMBEDPIPE_CHECKS__GATES",
            "{canary: warn",
            ["checks.gates (env EMBEDPIPE_CHECKS__GATES)", "JSON object"],
        ),
        (
            "EMBEDPIPE_CHECKS__GATES",
            '{"canary": {"severity": "loud"}}',
            ["checks.gates.canary.severity (env EMBEDPIPE_CHECKS__GATES (key canary.severity))", "'loud'"],
        ),
        ("EMBEDPIPE_SOURCE", '{"include": 3}', ["source.include (env EMBEDPIPE_SOURCE (key include))"]),
        (
            "EMBEDPIPE_MODEL__BATCHSIZE",
            "8",
            ["model.batchsize (env EMBEDPIPE_MODEL__BATCHSIZE)", "batch_size?"],
        ),
        (
            "EMBEDPIPE_CHUNK__OVERLAP",
            "500",
            ["chunk.overlap=500", "chunk.overlap from env EMBEDPIPE_CHUNK__OVERLAP"],
        ),
    ],
)
def test_env_errors_name_the_path_and_the_variable(
    var: str, value: str, needles: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as exc:
        get_settings()
    for needle in needles:
        assert needle in str(exc.value), str(exc.value)
    assert "config file None" not in str(exc.value) and "EnvSettingsSource" not in str(exc.value)


def test_a_secret_that_is_not_json_is_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDPIPE_STORE__STORAGE_OPTIONS", "aws_secret_access_key=hunter2")
    with pytest.raises(ConfigError) as exc:
        get_settings()
    assert "store.storage_options (env EMBEDPIPE_STORE__STORAGE_OPTIONS)" in str(exc.value)
    assert "hunter2" not in str(exc.value)


@pytest.mark.parametrize(
    ("toml", "needles"),
    [
        ('[model]\nbatch_size = "x"\n', ["model.batch_size (embedpipe.toml: [model] batch_size)", "'x'"]),
        ('[source]\ninclude = "*.md"\n', ["source.include (embedpipe.toml: [source] include)", "list"]),
        ("[model]\nbatchsize = 8\n", ["model.batchsize (embedpipe.toml: [model] batchsize)", "batch_size?"]),
        ("[modle]\nname = 'x'\n", ["modle (embedpipe.toml: [modle])", "did you mean model?"]),
        (
            '[checks.gates.canary]\nseverity = "loud"\n',
            ["checks.gates.canary.severity (embedpipe.toml: [checks.gates.canary] severity)"],
        ),
        ("[chunk]\ntokens = 64\noverlap = 40\n", ["chunk.overlap from embedpipe.toml: [chunk] overlap"]),
    ],
)
def test_toml_errors_name_the_file_and_key(tmp_path: Path, toml: str, needles: list[str]) -> None:
    (tmp_path / "embedpipe.toml").write_text(toml)
    with pytest.raises(ConfigError) as exc:
        get_settings()
    for needle in needles:
        assert needle in str(exc.value).replace(str(tmp_path) + "/", ""), str(exc.value)


def test_bad_toml_syntax_names_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "embedpipe.toml").write_text('[model]\nname = "ok"\nbatch_size = = 3\n')
    with pytest.raises(ConfigError) as exc:
        get_settings()
    assert "embedpipe.toml is not valid TOML" in str(exc.value) and "line 3" in str(exc.value)


def test_flag_errors_name_the_flag_and_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDPIPE_MODEL__BATCH_SIZE", "32")  # fine, but the flag is what is used
    flags = {
        "model.batch_size": "--batch-size",
        "model.backend": "--backend",
        "model.precision": "--precision",
    }
    with pytest.raises(ConfigError) as exc:
        get_settings({"model": {"batch_size": 0}}, flags=flags)
    assert "model.batch_size (flag --batch-size): got 0" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        get_settings({"model": {"backend": "onnx", "precision": "fp16"}}, flags=flags)
    assert "model.precision from flag --precision; model.backend from flag --backend" in str(exc.value)
