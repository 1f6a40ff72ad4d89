"""Typed records: model identity, rejects and the run summary every run leaves behind."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

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
    precision: str = Field(
        "fp32", description="Compute precision (recorded; vectors of fp16/bf16/fp32 runs may be mixed)."
    )

    @property
    def model_id(self) -> str:
        """``name@hash12``, plus ``+backend`` for other backends than torch: a column value."""
        suffix = "" if self.backend == "torch" else f"+{self.backend}"
        return f"{self.name}@{self.weights_hash[:12]}{suffix}"

    @property
    def vector_key(self) -> str:
        """A hash of everything that changes the vectors of a text: equal keys, equal vectors.

        Stricter than :meth:`model_id` and than the table's compatibility check (which lets
        precisions mix): a cache must give back what this configuration would compute.
        """
        parts = (
            self.name,
            self.weights_hash,
            self.dim,
            self.max_seq_length,
            self.normalize,
            self.backend,
            self.precision,
        )
        return hashlib.blake2b(json.dumps(parts).encode(), digest_size=16).hexdigest()

    def table_metadata(self) -> dict[str, str]:
        """Schema metadata entries recording this identity in a table."""
        return {
            "embedpipe.model.name": self.name,
            "embedpipe.model.weights_hash": self.weights_hash,
            "embedpipe.model.dim": str(self.dim),
            "embedpipe.model.max_seq_length": str(self.max_seq_length),
            "embedpipe.model.normalize": str(self.normalize).lower(),
            "embedpipe.model.backend": self.backend,
            "embedpipe.model.precision": self.precision,
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
            precision=md.get("embedpipe.model.precision", "fp32"),
        )


class ChunkingIdentity(BaseModel):
    """What determines chunk boundaries: settings and the tokenizer that counts tokens."""

    model_config = ConfigDict(frozen=True)

    tokens: int
    overlap: int
    budget: int = Field(description="Content tokens per chunk after the model limit and special tokens.")
    tokenizer_hash: str = Field(description="sha256 of the tokenizer's serialised definition.")

    def table_metadata(self) -> dict[str, str]:
        return {
            "embedpipe.chunk.tokens": str(self.tokens),
            "embedpipe.chunk.overlap": str(self.overlap),
            "embedpipe.chunk.budget": str(self.budget),
            "embedpipe.chunk.tokenizer_hash": self.tokenizer_hash,
        }

    @classmethod
    def from_table_metadata(cls, md: dict[str, str]) -> ChunkingIdentity | None:
        if "embedpipe.chunk.tokens" not in md:
            return None
        return cls(
            tokens=int(md["embedpipe.chunk.tokens"]),
            overlap=int(md.get("embedpipe.chunk.overlap", "0")),
            budget=int(md.get("embedpipe.chunk.budget", "0")),
            tokenizer_hash=md.get("embedpipe.chunk.tokenizer_hash", ""),
        )

    def same_chunks(self, other: ChunkingIdentity) -> bool:
        """Whether both produce the same chunks from the same text."""
        return (self.budget, self.overlap, self.tokenizer_hash) == (
            other.budget,
            other.overlap,
            other.tokenizer_hash,
        )


class CheckResult(BaseModel):
    """The result of one check on one table version (a row of the ``checks`` table)."""

    check: str
    status: str = Field(description="pass, warn (fired, severity warn), fail, skipped or error.")
    severity: str = Field(description="fail, warn or off.")
    statistic: float | None = None
    threshold: float | None = None
    p_value: float | None = None
    effect: float | None = None
    detail: str = ""
    table_version: int | None = None
    reference_version: int | None = None

    @property
    def blocks(self) -> bool:
        """Whether this result keeps the version from being served."""
        return self.severity == "fail" and self.status in {"fail", "error"}


class RunSummary(BaseModel):
    """The typed summary of one sync run; ``embedpipe run --json`` prints it."""

    run_id: str
    flow: str = "sync"
    status: str = Field(description="completed or failed")
    exit_code: int = Field(0, description="The CLI's exit status: 0, or the failure's (see the README).")
    previous_version: int | None = Field(None, description="Latest table version when the run started.")
    message: str | None = None
    table: str
    table_version: int | None = Field(description="Version created by this run; null when none was.")
    sources: list[str]
    started_at: datetime
    finished_at: datetime
    duration_s: float
    docs_seen: int
    docs_rejected: int
    docs_new: int = 0
    docs_changed: int = Field(0, description="Documents whose text or metadata changed.")
    docs_unchanged: int = 0
    docs_deleted: int = 0
    chunks_written: int
    chunks_deleted: int = 0
    chunks_reused: int = Field(0, description="Chunks whose vector was reused from the table (same text).")
    chunks_embedded: int
    chunks_truncated: int
    embed_seconds: float
    chunks_per_s: float
    model: str
    model_id: str
    dim: int
    device: str
    backend: str = Field("torch", description="Inference backend: torch, onnx, onnx-int8 or openvino.")
    precision: str = Field("fp32", description="Compute precision: fp32, fp16, bf16 or int8.")
    rejects: list[Reject]
    checks: list[CheckResult] = Field(default_factory=list, description="Checks run on the new version.")
    gate: str | None = Field(
        None, description="passed, failed, or null when no version was checked (no change, checks off)."
    )
    served_version: int | None = Field(None, description="The version the table serves after this run.")
    reused_chunk_texts: bool | None = Field(
        None,
        description="reindex only: chunk texts were reused from the table instead of re-reading sources.",
    )
    backend_choice: dict[str, Any] | None = Field(
        None,
        description="How model.backend=auto was resolved: backend, reason, and per candidate its "
        "precision, texts_per_s, speedup over torch, mean_cosine and min_cosine to torch, and whether "
        "it passed the quality guard; null when the backend was set explicitly.",
    )


class CheckReport(BaseModel):
    """What ``embedpipe check`` found: the checks of one version against its reference."""

    run_id: str
    table: str
    version: int
    reference_version: int | None
    reference: str = Field(description="How the reference was chosen (served, baseline tag, previous).")
    gate: str = Field(description="passed or failed (or skipped when checks are turned off).")
    blocking: list[str] = Field(
        default_factory=list, description="Checks that keep the version from serving."
    )
    served_version: int | None
    published: bool = Field(False, description="Whether this check published the version.")
    checks: list[CheckResult] = Field(default_factory=list)
    message: str | None = None
