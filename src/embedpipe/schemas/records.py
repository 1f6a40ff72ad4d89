"""Typed records: model identity, rejects and the run summary every run leaves behind."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class Reject(BaseModel):
    """One quarantined file or record."""

    model_config = ConfigDict(frozen=True)

    path: str = Field(description="File, or file#record, relative to its source root.")
    reason: str = Field(description="Why it was rejected.")
    source: str = Field("", description="The source root.")


class ModelIdentity(BaseModel):
    """What identifies the vectors a model produces; stored with the data."""

    model_config = ConfigDict(frozen=True)

    name: str
    weights_hash: str = Field(description="sha256 over the model's weight files, or the hub revision.")
    dim: int = Field(gt=0)
    max_seq_length: int = Field(gt=0)
    normalize: bool
    backend: str = "torch"

    @property
    def model_id(self) -> str:
        """``name@hash12``: short and unique enough for a column value."""
        return f"{self.name}@{self.weights_hash[:12]}"

    def table_metadata(self) -> dict[str, str]:
        """Schema metadata entries recording this identity in a table."""
        return {
            "embedpipe.model.name": self.name,
            "embedpipe.model.weights_hash": self.weights_hash,
            "embedpipe.model.dim": str(self.dim),
            "embedpipe.model.max_seq_length": str(self.max_seq_length),
            "embedpipe.model.normalize": str(self.normalize).lower(),
            "embedpipe.model.backend": self.backend,
        }

    @classmethod
    def from_table_metadata(cls, md: dict[str, str]) -> ModelIdentity | None:
        """Read an identity back from schema metadata; ``None`` if the table has none."""
        if "embedpipe.model.name" not in md:
            return None
        return cls(
            name=md["embedpipe.model.name"],
            weights_hash=md.get("embedpipe.model.weights_hash", ""),
            dim=int(md["embedpipe.model.dim"]),
            max_seq_length=int(md.get("embedpipe.model.max_seq_length", "512")),
            normalize=md.get("embedpipe.model.normalize", "true") == "true",
            backend=md.get("embedpipe.model.backend", "torch"),
        )


class RunSummary(BaseModel):
    """The typed summary of one sync run; ``embedpipe run --json`` prints it."""

    run_id: str
    flow: str = "sync"
    status: str = Field(description="completed or failed")
    message: str | None = None
    table: str
    table_version: int | None = Field(description="Version created by this run; null when none was.")
    sources: list[str]
    started_at: datetime
    finished_at: datetime
    duration_s: float
    docs_seen: int
    docs_rejected: int
    chunks_written: int
    chunks_embedded: int
    chunks_truncated: int
    embed_seconds: float
    chunks_per_s: float
    model: str
    model_id: str
    dim: int
    device: str
    rejects: list[Reject]
