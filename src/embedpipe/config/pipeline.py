"""Settings of the pipeline's stages: reading sources, chunking, the embedding model, and the runtime."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from embedpipe.config._base import _Group, _UsesS3
from embedpipe.sources.kinds import SUPPORTED_EXTENSIONS

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


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
        description="Do not re-read files whose size and mtime match the table's record (record files: "
        "while text_field and id_field are those the table was written with; false: read and hash "
        "every file on every run).",
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
