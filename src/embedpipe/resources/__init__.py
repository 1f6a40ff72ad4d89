"""Long-lived clients: the embedding model and the LanceDB store.

Both are plain Python (no Prefect), built lazily, cached per process and picklable, so that a
Prefect task, a Dask worker or a unit test can use them alike.
"""
