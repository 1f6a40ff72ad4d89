"""Long-lived clients: the embedding model, its backends and the query path.

They are plain Python (no Prefect), built lazily, cached per process and picklable, so that a
Prefect task, a Dask worker or a unit test can use them alike. The LanceDB store, built the same
way, is :mod:`embedpipe.store`.
"""
