"""The settings model and its loader.

One root :class:`Settings` with nested groups, loaded from (highest precedence first) explicit
overrides (the CLI's flags), ``EMBEDPIPE_*`` environment variables with ``__`` as the nesting
delimiter (``EMBEDPIPE_MODEL__BATCH_SIZE=32``), a TOML file (``./embedpipe.toml`` or the path in
``EMBEDPIPE_CONFIG``), then defaults. A wrong value raises :class:`~embedpipe.errors.ConfigError`
naming the setting, where it came from and what is expected.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from embedpipe.checks.registry import CHECKS, Severity
from embedpipe.config.origins import SECRET_FIELDS, Origins, read_toml
from embedpipe.errors import ConfigError
from embedpipe.sources.kinds import SUPPORTED_EXTENSIONS

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
CONFIG_ENV = "EMBEDPIPE_CONFIG"
DEFAULT_CONFIG_FILE = "embedpipe.toml"

_toml_path: ContextVar[Path | None] = ContextVar("embedpipe_toml_path", default=None)


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class S3Settings(_Group):
    """Object storage (AWS S3 or an S3-compatible store) for ``s3://`` database URIs and sources.

    Unset credentials fall back to the standard AWS chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
    ``AWS_PROFILE`` and the shared config files, container and instance roles); an unset endpoint means
    AWS itself (or ``AWS_ENDPOINT_URL``).
    """

    endpoint: str | None = Field(
        None,
        description="S3-compatible endpoint URL, e.g. http://127.0.0.1:9000 for MinIO; unset: AWS S3.",
    )
    region: str | None = Field(
        None, min_length=1, description="Region of the bucket(s); unset: AWS_REGION or us-east-1."
    )
    access_key_id: str | None = Field(
        None, min_length=1, description="Access key id; unset: the AWS credential chain."
    )
    secret_access_key: SecretStr | None = Field(
        None, description="Secret access key (secret: never logged or recorded)."
    )
    session_token: SecretStr | None = Field(
        None, description="Session token of temporary credentials (secret)."
    )
    allow_http: bool = Field(
        False, description="Allow a plain-HTTP endpoint (a local or otherwise trusted store only)."
    )
    connect_timeout_s: float = Field(10.0, gt=0, le=600, description="Connect timeout per request.")
    request_timeout_s: float = Field(120.0, gt=0, le=3600, description="Timeout of one request.")

    @field_validator("endpoint")
    @classmethod
    def _endpoint_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        v = value.strip().rstrip("/")
        scheme, sep, host = v.partition("://")
        if not sep or scheme.lower() not in {"http", "https"} or not host or "/" in host:
            raise ValueError(f"expected an http(s)://host[:port] URL without a path, got {value!r}")
        return f"{scheme.lower()}://{host}"

    @model_validator(mode="after")
    def _consistent(self) -> S3Settings:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError(
                "s3.access_key_id and s3.secret_access_key go together: set both, or neither to use "
                "the AWS credential chain"
            )
        if self.session_token is not None and self.access_key_id is None:
            raise ValueError("s3.session_token needs s3.access_key_id and s3.secret_access_key")
        if self.endpoint and self.endpoint.startswith("http://") and not self.allow_http:
            raise ValueError(
                f"s3.endpoint={self.endpoint} is plain HTTP (keys and data unencrypted); use https, or "
                "set s3.allow_http=true (env EMBEDPIPE_S3__ALLOW_HTTP=true) for a local or trusted store"
            )
        return self


class _UsesS3(_Group):
    """A group whose client may reach object storage: it carries the root ``s3`` group (set by
    :class:`Settings`), so ``Store(settings.store)`` and the readers need no second argument."""

    _s3: S3Settings | None = PrivateAttr(None)

    @property
    def s3(self) -> S3Settings:
        """The object-storage settings (defaults, i.e. the AWS chain, when built outside Settings)."""
        return self._s3 if self._s3 is not None else S3Settings()


class SourceSettings(_UsesS3):
    """How sources are scanned and read."""

    include: list[str] = Field(
        default_factory=lambda: [f"**/*{ext}" for ext in SUPPORTED_EXTENSIONS],
        description="Glob patterns (relative to each source root, ** for any depth) of files to read.",
    )
    exclude: list[str] = Field(
        default_factory=lambda: ["**/.*", "**/.*/**"],
        description="Glob patterns of files to skip; hidden files and folders by default.",
    )
    text_field: str = Field(
        "text", min_length=1, description="Field holding the text in JSON/JSONL/CSV/Parquet."
    )
    id_field: str = Field(
        "id", min_length=1, description="Field holding the record id in multi-record files."
    )
    max_file_mb: float = Field(
        64.0, gt=0, le=100_000, description="Files larger than this are rejected (MiB)."
    )
    max_reject_ratio: float = Field(
        0.5, ge=0.0, le=1.0, description="The run fails, committing nothing, when rejected/seen exceeds this."
    )
    skip_unchanged_files: bool = Field(
        True,
        description="Do not re-read .txt/.md/.html files whose size and mtime match the table's record "
        "(false: read and hash every file on every run).",
    )


class ChunkSettings(_Group):
    """How documents are cut into chunks, in tokens of the model's own tokenizer."""

    tokens: int = Field(
        256,
        ge=8,
        le=32_768,
        description="Largest chunk in tokens, special tokens included; capped at the model's max_seq_length.",
    )
    overlap: int = Field(
        32, ge=0, le=16_384, description="Tokens shared by consecutive chunks of a document."
    )
    max_chunks_per_doc: int = Field(
        10_000,
        ge=1,
        le=10_000_000,
        description="A document needing more chunks is rejected, detected before it is fully "
        "tokenized; 10,000 chunks of 256 tokens is about 10-15 MB of prose, more than any book.",
    )

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkSettings:
        if self.overlap >= self.tokens // 2:
            raise ValueError(
                f"chunk.overlap={self.overlap} must be less than half of chunk.tokens={self.tokens}"
            )
        return self


class ModelSettings(_Group):
    """Which embedding model runs, where, and how."""

    name: str = Field(
        DEFAULT_MODEL,
        min_length=1,
        description="sentence-transformers model id or local path; the default is bundled offline.",
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    batch_size: int = Field(64, ge=1, le=65_536, description="Chunks per forward pass.")
    normalize: bool = Field(True, description="Store unit-length vectors (cosine = dot product).")
    offline: bool = Field(True, description="Never contact a model hub (HF_HUB_OFFLINE=1).")
    backend: Literal["auto", "torch", "onnx", "onnx-int8", "openvino"] = Field(
        "auto",
        description="Inference backend: auto (a new table gets the fastest installed backend that "
        "passes the quality guard against torch, measured once per machine; an existing table keeps "
        "its own), torch, onnx (ONNX Runtime, fp32), onnx-int8 (dynamic int8 quantization) or "
        "openvino. Part of the model identity: switching it is a reindex.",
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto",
        description="Compute precision; vectors are stored as float32 either way. auto: fp16 on CUDA "
        "(torch), fp32 on CPU (torch, onnx), the hardware's best for openvino (bf16 where the CPU has AMX).",
    )
    devices: list[str] = Field(
        default_factory=list,
        description="Several devices used together (one model replica each), e.g. [cuda:0, cuda:1]. "
        "Empty: model.device, where auto means every visible GPU.",
    )
    batch_tokens: int | None = Field(
        None,
        ge=16,
        le=16_777_216,
        description="Padded tokens per batch (length-sorted chunks); batch_size caps the chunks per "
        "batch. Unset: 4096 for torch on CPU, 1024 for ONNX Runtime on CPU, 65536 on CUDA.",
    )
    threads: int | None = Field(
        None, ge=1, le=1024, description="CPU threads for onnx/openvino (unset: the runtime's default)."
    )
    export_dir: str | None = Field(
        None,
        description="Where ONNX exports are cached (unset: $HF_HOME/embedpipe-exports, beside the "
        "Hugging Face model cache).",
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        v = value.strip().lower()
        if v in {"auto", "cpu", "cuda", "mps"} or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError(f"unknown device {value!r}; expected auto, cpu, cuda, cuda:N or mps")

    @field_validator("devices")
    @classmethod
    def _known_devices(cls, value: list[str]) -> list[str]:
        out = []
        for d in value:
            v = d.strip().lower()
            if not (v == "cpu" or v == "cuda" or (v.startswith("cuda:") and v[5:].isdigit())):
                raise ValueError(f"unknown device {d!r} in model.devices; expected cpu, cuda or cuda:N")
            out.append("cuda:0" if v == "cuda" else v)
        if len(set(out)) != len(out):
            raise ValueError(f"model.devices lists a device twice: {value}")
        return out

    @model_validator(mode="after")
    def _backend_fits(self) -> ModelSettings:
        """Combinations that can never run, refused before any work (installed runtimes and the
        devices present are checked when the model loads)."""
        b, p, d = self.backend, self.precision, self.device
        if b in {"onnx", "onnx-int8"} and p not in {"auto", "fp32"}:
            raise ValueError(
                f"model.precision={p} is not available with model.backend={b} (it runs the fp32 export, "
                "or its int8 quantization); use precision auto or fp32"
            )
        if p == "fp16" and d == "cpu" and b != "openvino":
            raise ValueError(
                "model.precision=fp16 needs a GPU; on a CPU use bf16 (fast where it has AMX) or fp32"
            )
        if b in {"onnx-int8", "openvino"} and d not in {"auto", "cpu"}:
            raise ValueError(
                f"model.backend={b} runs on the CPU; device={d} was asked for (use torch on GPUs)"
            )
        if self.devices and b not in {"torch", "auto"}:  # auto: torch, the one that runs replicas
            raise ValueError(
                f"model.devices applies to model.backend=torch only (one replica per GPU); backend={b} "
                "runs on one device: use model.device"
            )
        return self


class VectorCacheSettings(_Group):
    """The content-addressed vector cache: vectors a discarded version held (a failed gate, a
    rollback, a reindex, a run that failed before its commit), kept so that no run embeds the same
    text with the same model twice."""

    enabled: bool = Field(
        True, description="Keep discarded vectors in the database's vector_cache table and reuse them."
    )
    max_rows: int = Field(
        1_000_000,
        ge=1,
        le=1_000_000_000,
        description="Most vectors kept; the oldest discarded go first (trimmed on insert and by retention).",
    )
    ttl_days: float = Field(
        30.0,
        gt=0,
        le=3650,
        description="Cached vectors older than this are removed (on insert and by retention).",
    )


class StoreSettings(_UsesS3):
    """Where the LanceDB database lives."""

    uri: str = Field(
        ".embedpipe/db", min_length=1, description="LanceDB database URI (a folder or s3://...)."
    )
    table: str = Field(
        "chunks", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", description="Table of chunks."
    )
    storage_options: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Extra Lance object-store options, applied over those derived from the s3 group; "
        "values are secret.",
    )
    lock: Literal["auto", "file", "prefect", "none"] = Field(
        "auto",
        description="Run lock serializing the runs that write one table: file (a lock file in the "
        "database folder; one machine), prefect (a Prefect global concurrency limit; writers on any "
        "machine sharing a Prefect server), none (you guarantee a single writer). auto: file for a "
        "local folder, prefect for an object-store URI.",
    )
    lock_timeout_s: float = Field(
        3600.0,
        ge=0,
        le=7 * 24 * 3600,
        description="How long a run waits for another run on the same table to finish; 0 fails at once.",
    )
    cache: VectorCacheSettings = Field(
        default_factory=VectorCacheSettings,
        description="Vectors of discarded versions, reused by later runs (see VectorCacheSettings).",
    )


class RuntimeSettings(_Group):
    """How the flow shards and overlaps the work."""

    shard_mb: float = Field(4.0, gt=0, le=4096, description="Source bytes per ingest/chunk/embed shard.")
    shard_files: int = Field(2000, ge=1, le=1_000_000, description="Most files per shard.")
    ramp_shards: int = Field(
        4,
        ge=0,
        le=16,
        description="The first N shards start at shard_mb/2**N and double, so the model starts early "
        "while the rest is read and chunked behind it.",
    )
    shard_rows: int = Field(
        4096, ge=1, le=10_000_000, description="Stored chunk rows per shard when reindexing from the table."
    )
    max_inflight_shards: int = Field(
        3, ge=1, le=64, description="Shards read/chunked ahead of the model; bounds memory."
    )
    staging_ttl_hours: float = Field(
        24.0, gt=0, description="Staged files of runs that died are removed after this many hours."
    )
    runner: Literal["local", "dask"] = Field(
        "local",
        description="local: this process (threads); dask: shards run on Dask workers (prefect-dask), "
        "each writing its staged part, and the flow commits once.",
    )
    dask_address: str | None = Field(
        None,
        description="Scheduler of an existing Dask cluster, e.g. tcp://10.0.0.5:8786 (runner=dask); "
        "unset: a local cluster of dask_workers processes.",
    )
    dask_workers: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Worker processes of the local Dask cluster (runner=dask); unset: one per GPU, or "
        "cores // 4 (at least 1) without GPUs.",
    )

    @field_validator("dask_address")
    @classmethod
    def _scheduler_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        v = value.strip()
        if not re.fullmatch(r"(tcp|tls)://[^\s/:]+:\d{1,5}/?", v):
            raise ValueError(f"expected a scheduler address like tcp://host:8786, got {value!r}")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _one_cluster(self) -> RuntimeSettings:
        if self.dask_address is not None and self.dask_workers is not None:
            raise ValueError(
                f"runtime.dask_address={self.dask_address} and runtime.dask_workers={self.dask_workers} "
                "exclude each other: connect to an existing cluster, or start a local one of N workers"
            )
        return self


class RetentionSettings(_Group):
    """Which old table versions may be removed. Never: tagged versions (other than run-id tags of
    versions past the policy), the latest version, or the last ``keep_versions`` versions."""

    keep_versions: int = Field(10, ge=1, le=100_000, description="The last N versions are always kept.")
    max_age_hours: float = Field(
        168.0, gt=0, description="Versions younger than this are kept (default one week)."
    )
    auto: bool = Field(
        True, description="Apply the policy after every run (removes files, makes no version)."
    )


class GateSettings(_Group):
    """How one check gates publication."""

    severity: Severity | None = Field(
        None, description="fail blocks serving, warn only reports, off skips the check; None: default."
    )
    threshold: float | None = Field(None, description="The check's threshold; None: its default.")
    max_drop: float | None = Field(
        None, ge=0, description="Quality checks: largest allowed drop against the reference version."
    )


class ChecksSettings(_Group):
    """Drift and similarity-quality checks that gate which version is served."""

    enabled: bool = Field(True, description="Check every new version before serving it.")
    baseline_tag: str | None = Field(
        None, description="Compare against this pinned tag (or version number) instead of the served version."
    )
    sample_size: int = Field(
        5000, ge=50, le=10_000_000, description="Vectors per side drawn (fixed seed) for distribution checks."
    )
    seed: int = Field(0, ge=0, description="Seed of every subsample and permutation.")
    alpha: float = Field(
        0.001, gt=0, lt=0.5, description="Significance level of the statistical drift tests."
    )
    golden: list[str] = Field(
        default_factory=list, description="Golden-set JSONL files ({query, relevant: {doc_id: grade}})."
    )
    golden_max_missing: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Largest share of a golden set's relevant doc_ids the table may lack (scored as not "
        "retrieved and listed); above it the golden checks are an error (a wrong id scheme).",
    )
    triplets: list[str] = Field(
        default_factory=lambda: ["builtin"],
        description="Triplet JSONL files ({anchor, positive, negative, margin}); builtin = the bundled set.",
    )
    pairs: list[str] = Field(
        default_factory=lambda: ["builtin"],
        description="Scored pair JSONL files ({a, b, score}); builtin = the bundled set.",
    )
    canary: str = Field("builtin", description="Text file of canary probes, one per line; builtin = bundled.")
    k: int = Field(10, ge=1, le=1000, description="k of recall@k and of neighbour stability.")
    gates: dict[str, GateSettings] = Field(
        default_factory=dict, description="Per-check overrides of severity, threshold and max_drop."
    )

    @field_validator("gates")
    @classmethod
    def _known_checks(cls, value: dict[str, GateSettings]) -> dict[str, GateSettings]:
        unknown = sorted(set(value) - set(CHECKS))
        if unknown:
            raise ValueError(f"unknown check(s) {unknown}; known: {sorted(CHECKS)}")
        return value

    def gate(self, name: str) -> tuple[str, float, float | None]:
        """The effective (severity, threshold, max_drop) of check ``name`` (defaults: the check registry)."""
        severity, threshold, max_drop = CHECKS[name].gate
        g = self.gates.get(name)
        if g is not None:
            severity = g.severity or severity
            threshold = threshold if g.threshold is None else g.threshold
            max_drop = max_drop if g.max_drop is None else g.max_drop
        return severity, threshold, max_drop


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
    s3: S3Settings = Field(default_factory=S3Settings)

    @model_validator(mode="after")
    def _share_s3(self) -> Settings:
        # One S3 group serves both clients that may touch object storage (the store and the readers).
        self.store._s3 = self.s3
        self.source._s3 = self.s3
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
