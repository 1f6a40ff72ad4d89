"""Settings of the table: where the database lives, the vector cache, and which old versions may go."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from embedpipe.config._base import _Group, _UsesS3


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
