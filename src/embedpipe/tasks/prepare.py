"""Preparation task: load the model once, refuse an incompatible table, sweep dead staging."""

from __future__ import annotations

from prefect import get_run_logger, task

from embedpipe.config import Settings
from embedpipe.resources.embedder import get_embedder
from embedpipe.resources.store import Store
from embedpipe.schemas import ModelIdentity
from embedpipe.tasks._common import TASK_DEFAULTS


def prepare(settings: Settings) -> tuple[ModelIdentity, str]:
    """Load the model and check that the target table was built with it.

    Returns:
        The model identity and the device it runs on.

    Raises:
        ModelError: The model cannot be loaded.
        ModelMismatchError: The table holds vectors of another model.
    """
    embedder = get_embedder(settings.model)
    store = Store(settings.store)
    store.check_compatible(embedder.identity)
    store.sweep_staging(settings.runtime.staging_ttl_hours)
    return embedder.identity, embedder.device


@task(name="prepare", **TASK_DEFAULTS)
def prepare_task(settings: Settings) -> tuple[ModelIdentity, str]:
    """Load the model and check the table (see :func:`prepare`)."""
    identity, device = prepare(settings)
    get_run_logger().info("stage=prepare model=%s device=%s dim=%d", identity.model_id, device, identity.dim)
    return identity, device
