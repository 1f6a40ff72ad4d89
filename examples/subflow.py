"""A data team's own Prefect flow that keeps an embedpipe table fresh, then queries it.

``embedpipe.sync`` runs as a subflow of ``refresh_and_ask`` (it appears under it in the Prefect
UI, with its tasks and artifacts); ``embedpipe.open(...).search`` reads the served version
without starting anything. Run it from the repository root::

    python examples/subflow.py examples/corpus "how do vector indexes trade recall for speed"

Settings come from the environment and ``embedpipe.toml`` as for the command line; the keyword
arguments of ``embedpipe.sync`` override them (``db=``, ``table=``, ``model=``, or a whole group
such as ``chunk={"tokens": 128}``).
"""

from __future__ import annotations

import sys
from typing import Any

from prefect import flow, get_run_logger

import embedpipe


@flow(name="refresh-and-ask")
def refresh_and_ask(corpus: str, question: str, db: str = ".embedpipe/db", k: int = 3) -> dict[str, Any]:
    """Sync ``corpus`` into the table at ``db``, then return the ``k`` chunks nearest to ``question``."""
    logger = get_run_logger()
    summary = embedpipe.sync([corpus], db=db)  # a subflow; raises embedpipe.RunFailed on failure
    logger.info(
        "synced: %d documents, %d chunks embedded, serving version %s",
        summary.docs_seen,
        summary.chunks_embedded,
        summary.served_version,
    )
    hits = embedpipe.open(db).search(question, k=k)
    return {"run_id": summary.run_id, "served_version": summary.served_version, "hits": hits}


if __name__ == "__main__":
    corpus, question = sys.argv[1], " ".join(sys.argv[2:]) or "what is an embedding?"
    for hit in refresh_and_ask(corpus, question)["hits"]:
        print(f"{hit['score']:.3f}  {hit['doc_id']}")
