"""The root settings model and its loader (the groups live in ``pipeline``, ``storage`` and ``checks``).

One root :class:`Settings` with nested groups, loaded from (highest precedence first) explicit
overrides (the CLI's flags), ``EMBEDPIPE_*`` environment variables with ``__`` as the nesting
delimiter (``EMBEDPIPE_MODEL__BATCH_SIZE=32``), a TOML file (``./embedpipe.toml`` or the path in
``EMBEDPIPE_CONFIG``), then defaults. A wrong value raises :class:`~embedpipe.errors.ConfigError`
naming the setting, where it came from and what is expected.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from embedpipe.config._base import S3Settings
from embedpipe.config.checks import ChecksSettings
from embedpipe.config.index import IndexSettings
from embedpipe.config.origins import SECRET_FIELDS, Origins, read_toml
from embedpipe.config.pipeline import ChunkSettings, ModelSettings, RuntimeSettings, SourceSettings
from embedpipe.config.storage import RetentionSettings, StoreSettings
from embedpipe.errors import ConfigError

CONFIG_ENV = "EMBEDPIPE_CONFIG"
DEFAULT_CONFIG_FILE = "embedpipe.toml"

_toml_path: ContextVar[Path | None] = ContextVar("embedpipe_toml_path", default=None)


class Settings(BaseSettings):
    """Root settings of embedpipe."""

    model_config = SettingsConfigDict(
        env_prefix="EMBEDPIPE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    source: SourceSettings = Field(default_factory=SourceSettings)
    chunk: ChunkSettings = Field(default_factory=ChunkSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    checks: ChecksSettings = Field(default_factory=ChecksSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    s3: S3Settings = Field(default_factory=S3Settings)

    @model_validator(mode="after")
    def _share_s3(self) -> Settings:
        # One S3 group serves both clients that may touch object storage (the store and the sources).
        self.store._s3 = self.s3
        self.source._s3 = self.s3
        # The index_recall gate holds the served index to index.min_recall (one setting, one place).
        self.checks._min_recall = self.index.min_recall
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _toml_path.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    def public_dict(self) -> dict[str, Any]:
        """Settings as plain JSON-able data with every secret masked, for logs and run records."""
        return self.model_dump(mode="json")


def _resolve_config_file(config_file: str | os.PathLike[str] | None) -> Path | None:
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(
                f"config file not found: path={path}; pass an existing TOML file or omit --config"
            )
        return path
    env_path = os.environ.get(CONFIG_ENV)
    if env_path:
        path = Path(env_path)
        if not path.is_file():
            raise ConfigError(
                f"config file not found: {CONFIG_ENV}={env_path}; point it at a TOML file or unset it"
            )
        return path
    default = Path.cwd() / DEFAULT_CONFIG_FILE
    return default if default.is_file() else None


def get_settings(
    overrides: dict[str, Any] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    flags: dict[str, str] | None = None,
) -> Settings:
    """Load settings from flags, environment, TOML file and defaults.

    Args:
        overrides: Nested values that win over every other source, e.g. the CLI's
            ``{"model": {"batch_size": 16}}``. ``None`` values are ignored.
        config_file: A TOML file to read instead of ``$EMBEDPIPE_CONFIG`` or ``./embedpipe.toml``.
        flags: The command-line flag of each overridable setting path (``{"model.batch_size":
            "--batch-size"}``), so that an error names the flag that set a wrong value.

    Returns:
        The validated settings.

    Raises:
        ConfigError: A value is invalid or a source cannot be read; the message names each setting
            path and its source (the flag, the environment variable, or the file and key).
    """
    path = _resolve_config_file(config_file)
    pruned = _prune(overrides or {})
    origins = Origins(Settings, flags, pruned, path, read_toml(path) if path else None)
    token = _toml_path.set(path)
    try:
        return Settings(**pruned)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = tuple(err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(origins.unknown(loc))
                continue
            value = err.get("input")
            if SECRET_FIELDS & {str(p) for p in loc}:
                value = "**********"  # a rejected secret is still a secret
            msg = err["msg"].removeprefix("Value error, ")
            if isinstance(value, dict):  # a rule across a group's settings: the message names them
                dotted = ".".join(str(p) for p in loc) or "settings"
                problems.append(f"{dotted}: {msg}{origins.mentioned(msg)}")
            else:
                problems.append(f"{origins.describe(loc)}: got {value!r}; {msg}")
        raise ConfigError("invalid setting " + "; ".join(problems)) from e
    except SettingsError as e:  # an environment value that must be JSON and is not
        problems = origins.env_json_errors()
        if problems:
            raise ConfigError("invalid setting " + "; ".join(problems)) from e
        raise ConfigError(f"cannot read settings: {e}; check the EMBEDPIPE_* variables") from e
    except (ValueError, OSError) as e:
        raise ConfigError(f"cannot read settings from config file {path}: {e}") from e
    finally:
        _toml_path.reset(token)


def _prune(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            sub = _prune(v)
            if sub:
                out[k] = sub
        elif v is not None:
            out[k] = v
    return out
