"""What the checks of one version read: its reference version and fixed-seed samples of both."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from embedpipe.checks import quality
from embedpipe.config import ChecksSettings, ModelSettings
from embedpipe.embedding.embedder import settings_for_table
from embedpipe.errors import ConfigError, EmbedpipeError
from embedpipe.schemas import C, ModelIdentity, vector_matrix
from embedpipe.store import SERVING_TAG, Store
from embedpipe.store.filters import isin

SAMPLE_COLUMNS = [C.CHUNK_ID, C.CHUNK_HASH, C.TEXT, C.N_TOKENS, C.VECTOR]


class Skip(Exception):
    """A check that does not apply to this version; the message says why."""


@dataclass
class Side:
    """A fixed-seed sample of one table version."""

    version: int
    rows: int
    vectors: np.ndarray
    tokens: np.ndarray
    texts: list[str]
    text_hashes: list[str]
    chunk_ids: list[str]

    @classmethod
    def from_arrow(cls, version: int, rows: int, data: pa.Table, dim: int) -> Side:
        vectors = vector_matrix(data.column(C.VECTOR)) if data.num_rows else np.zeros((0, dim), np.float32)
        return cls(
            version=version,
            rows=rows,
            vectors=vectors,
            tokens=data.column(C.N_TOKENS).to_numpy(zero_copy_only=False).astype(np.int64),
            texts=data.column(C.TEXT).to_pylist(),
            text_hashes=data.column(C.CHUNK_HASH).to_pylist(),
            chunk_ids=data.column(C.CHUNK_ID).to_pylist(),
        )


@dataclass
class AuditContext:
    """Everything the checks of one version need: samples of it and of its reference."""

    run_id: str
    table: str
    version: int
    identity: ModelIdentity
    model: ModelSettings
    new: Side
    ref: Side | None
    reference_version: int | None
    reference_how: str
    reference_identity: ModelIdentity | None
    reference_stats: dict[str, float] = field(default_factory=dict)
    new_runs: list[str] | None = None
    """Runs whose rows are new since the reference (``None``: no reference, every row is new)."""
    search_mode: str = "vector"
    """The search mode served (``index.search_mode``): the golden-set gates judge this mode."""

    def require_new(self) -> Side:
        if len(self.new.vectors) < 5:
            raise Skip(
                f"{len(self.new.vectors)} rows are new since version {self.reference_version}: "
                "too few to compare distributions"
            )
        return self.new

    @property
    def comparable(self) -> bool:
        """Whether both versions' vectors live in the same space (same model and dimension)."""
        r = self.reference_identity
        return (
            self.ref is not None
            and r is not None
            and r.model_id == self.identity.model_id
            and r.dim == self.identity.dim
        )

    def require_ref(self, same_space: bool = True) -> Side:
        if self.ref is None:
            raise Skip(f"no reference version to compare with ({self.reference_how})")
        if same_space and not self.comparable:
            ri = self.reference_identity
            raise Skip(
                f"reference version {self.reference_version} was embedded by "
                f"{ri.model_id if ri else 'an unknown model'}, this version by {self.identity.model_id}: "
                "the vectors are not comparable (a model change is judged by the quality checks)"
            )
        return self.ref


def reference_for(store: Store, table: Any, version: int, baseline: str | None) -> tuple[int | None, str]:
    """The version to compare ``version`` with, and how it was chosen."""
    tags = table.tags.list()
    versions = {int(v["version"]) for v in table.list_versions()}
    if baseline:
        if baseline in tags:
            return int(tags[baseline]["version"]), f"baseline tag {baseline!r}"
        if baseline.isdigit() and int(baseline) in versions:
            return int(baseline), f"baseline version {baseline}"
        raise ConfigError(
            f"baseline {baseline!r} is neither a tag nor a version of table={table.name}; "
            "create the tag (see `embedpipe versions`) or fix checks.baseline_tag / --baseline"
        )
    served = tags.get(SERVING_TAG)
    if served and int(served["version"]) != version:
        return int(served["version"]), "the served version"
    # the newest earlier version with other rows: index versions repeat the rows of their commit
    earlier = store.last_other_version(version) if any(v < version for v in versions) else None
    if earlier is not None:
        return earlier, "the version before it"
    return None, "first version of the table"


def _sample_where(store: Store, table: Any, flt: Any, n: int, seed: int, dim: int, version: int) -> Side:
    """A fixed-seed sample of the rows of a pinned table matching ``flt``."""
    ids = table.search().where(flt).select([C.CHUNK_ID]).limit(None).to_arrow().column(0).to_pylist()
    ids.sort()
    if len(ids) > n:
        keep = np.sort(np.random.default_rng(seed).choice(len(ids), size=n, replace=False))
        ids = [ids[i] for i in keep]
    data = store.rows_where_in(table, C.CHUNK_ID, ids, SAMPLE_COLUMNS)
    data = data.take(pa.compute.sort_indices(data, [(C.CHUNK_ID, "ascending")]))
    return Side.from_arrow(version, len(ids), data, dim)


def validate_setup(
    store: Store, checks: ChecksSettings, version: int | None, baseline: str | None = None
) -> None:
    """Fail fast, before any work, on a bad check set file or a baseline that names nothing.

    Args:
        store: The store.
        checks: Check settings.
        version: The version that will be checked (``None``: no table yet, so no baseline to find).
        baseline: A baseline given for this call, else ``checks.baseline_tag``.

    Raises:
        ConfigError: Naming the file (and line) or the baseline.
    """
    quality.validate_sets(checks.golden, checks.triplets, checks.pairs, checks.canary)
    name = baseline or checks.baseline_tag
    if name and version is not None:
        reference_for(store, store.require_table(), version, name)


def load_context(
    store: Store,
    checks: ChecksSettings,
    model: ModelSettings,
    run_id: str,
    version: int,
    baseline: str | None = None,
    search_mode: str = "vector",
) -> AuditContext:
    """Draw the fixed-seed samples of ``version`` and of its reference.

    The *new* side is the rows written since the reference (rows of runs the reference does not
    hold): what this version adds is compared with what was served, so an unchanged majority
    neither hides a shift nor makes the two samples overlap. Without a reference every row is new.

    Args:
        store: The store.
        checks: Check settings (sample size, seed, baseline).
        model: Model settings; the name and normalisation are replaced by the table's own.
        run_id: The run doing the checks.
        version: The version to check.
        baseline: A tag or version to compare with instead of ``checks.baseline_tag``.
        search_mode: The search mode served (``index.search_mode``), judged by the golden set.

    Raises:
        ConfigError: The baseline names no tag or version.
    """
    table = store.open_version(version)
    identity = store.table_identity(table=table)
    assert identity is not None
    model = settings_for_table(model, identity)
    n, seed = checks.sample_size, checks.seed
    ref_version, how = reference_for(store, store.require_table(), version, baseline or checks.baseline_tag)
    ref = ref_identity = None
    stats: dict[str, float] = {}
    new_runs: list[str] | None = None
    if ref_version is not None:
        try:
            rt = store.open_version(ref_version)
            ref_identity = store.table_identity(table=rt)
            dim = ref_identity.dim if ref_identity else identity.dim
            ref = Side.from_arrow(
                ref_version, int(rt.count_rows()), store.sample_rows(rt, n, seed, SAMPLE_COLUMNS), dim
            )
            stats = store.recorded_checks(ref_version)
            new_runs = sorted(store.run_ids(table) - store.run_ids(rt))
        except EmbedpipeError as e:  # removed by retention, for example
            how = f"reference version {ref_version} cannot be read: {e}"
            ref_version, ref, ref_identity = None, None, None
    if new_runs is None:
        new = Side.from_arrow(
            version, int(table.count_rows()), store.sample_rows(table, n, seed, SAMPLE_COLUMNS), identity.dim
        )
    elif new_runs:
        flt = isin(C.RUN_ID, new_runs)
        new = _sample_where(store, table, flt, n, seed, identity.dim, version)
    else:
        empty = pa.table({c: pa.array([], type=table.schema.field(c).type) for c in SAMPLE_COLUMNS})
        new = Side.from_arrow(version, 0, empty, identity.dim)
    return AuditContext(
        run_id=run_id,
        table=store.settings.table,
        version=version,
        identity=identity,
        model=model,
        new=new,
        ref=ref,
        reference_version=ref_version,
        reference_how=how,
        reference_identity=ref_identity,
        reference_stats=stats,
        new_runs=new_runs,
        search_mode=search_mode,
    )
