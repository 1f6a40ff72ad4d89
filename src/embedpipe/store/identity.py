"""The model and chunking identity a table records, and the refusal to mix another into it.

A table's schema metadata carries the :class:`~embedpipe.schemas.ModelIdentity` of the model that
embedded it and the :class:`~embedpipe.schemas.ChunkingIdentity` of its chunks; a run with another
model, backend, normalisation or chunking is refused before it writes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedpipe.errors import ChunkingMismatchError, ModelMismatchError
from embedpipe.schemas import READER_META_KEY, C, ChunkingIdentity, ModelIdentity
from embedpipe.store.connection import StoreBase

if TYPE_CHECKING:
    from lancedb.table import Table


def model_mismatch(existing: ModelIdentity, identity: ModelIdentity, tname: str) -> None:
    """Refuse to put vectors of ``identity`` beside a table's vectors of ``existing``.

    Raises:
        ModelMismatchError: Another model, weights, dimension, backend or normalisation.
    """
    if existing.dim != identity.dim or existing.weights_hash != identity.weights_hash:
        raise ModelMismatchError(
            f"table={tname} was built with model={existing.name} (weights {existing.weights_hash[:12]}, "
            f"dim={existing.dim}); the configured model={identity.name} (weights "
            f"{identity.weights_hash[:12]}, dim={identity.dim}) would mix vectors from different spaces. "
            f"Run with --model {existing.name}, or switch the table to the new model with "
            f"`embedpipe reindex --model {identity.name}` (or write into a new table with --table NAME)"
        )
    if existing.backend != identity.backend:
        raise ModelMismatchError(
            f"table={tname} was embedded with model.backend={existing.backend}; this run uses "
            f"backend={identity.backend}, whose vectors differ slightly and would mix in one index. "
            f"Run with --backend {existing.backend}, or switch the table with "
            f"`embedpipe reindex --backend {identity.backend}`"
        )
    if existing.normalize != identity.normalize:
        raise ModelMismatchError(
            f"table={tname} stores normalize={existing.normalize} vectors; the configuration says "
            f"model.normalize={identity.normalize}. Use the table's setting, or run `embedpipe reindex`"
        )


class IdentityMixin(StoreBase):
    """What model and chunking a table was built with (part of :class:`~embedpipe.store.Store`)."""

    @staticmethod
    def _metadata(table: Table) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}

    def table_identity(self, name: str | None = None, table: Table | None = None) -> ModelIdentity | None:
        """The model identity recorded in the table, ``None`` if the table does not exist.

        Raises:
            ModelMismatchError: The table exists but records no embedpipe identity.
        """
        table = table if table is not None else self.open_table(name)
        if table is None:
            return None
        identity = ModelIdentity.from_table_metadata(self._metadata(table))
        if identity is None:
            vec = table.schema.field(C.VECTOR) if C.VECTOR in table.schema.names else None
            dim = getattr(vec.type, "list_size", None) if vec is not None else None
            raise ModelMismatchError(
                f"table={table.name} (dim={dim}) records no embedpipe model identity; "
                "write into a new table with --table NAME"
            )
        return identity

    def table_chunking(self, table: Table) -> ChunkingIdentity | None:
        return ChunkingIdentity.from_table_metadata(self._metadata(table))

    def table_reader(self, table: Table) -> str | None:
        """The reader identity the table's documents were read with (``None``: not recorded)."""
        return self._metadata(table).get(READER_META_KEY)

    def check_compatible(
        self,
        identity: ModelIdentity,
        chunking: ChunkingIdentity | None = None,
        name: str | None = None,
        table: Table | None = None,
    ) -> None:
        """Refuse to write into a table built with another model or other chunking.

        Raises:
            ModelMismatchError: Another model, weights, dimension or normalisation.
            ChunkingMismatchError: Other chunk size, overlap or tokenizer.
        """
        table = table if table is not None else self.open_table(name)
        if table is None:
            return
        existing = self.table_identity(table=table)
        assert existing is not None
        tname = name or self.settings.table
        model_mismatch(existing, identity, tname)
        stored = self.table_chunking(table)
        if chunking is not None and stored is not None and not stored.same_chunks(chunking):
            raise ChunkingMismatchError(
                f"table={tname} was built with chunk.tokens={stored.tokens} chunk.overlap={stored.overlap} "
                f"(budget {stored.budget}, tokenizer {stored.tokenizer_hash[:12]}); this run asks for "
                f"chunk.tokens={chunking.tokens} chunk.overlap={chunking.overlap} (budget {chunking.budget}, "
                f"tokenizer {chunking.tokenizer_hash[:12]}). Run `embedpipe reindex --chunk-tokens "
                f"{chunking.tokens} --chunk-overlap {chunking.overlap}` to rebuild the table, or run with "
                f"--chunk-tokens {stored.tokens} --chunk-overlap {stored.overlap}"
            )
