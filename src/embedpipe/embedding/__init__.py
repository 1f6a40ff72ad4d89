"""The embed stage: the embedding model, its backends and the query path.

Plain Python (no Prefect): built lazily, cached per process and picklable, so that a Prefect task
(:mod:`embedpipe.tasks.embedding`), a Dask worker or a unit test can use it alike. One concern a module:

- :mod:`.embedder`: the :class:`~.embedder.Embedder` protocol, the sentence-transformers embedder
  and the per-process registry (``get_embedder``); the facade callers use.
- :mod:`.card`: the model folder, its weights hash and the model card (facts known without a load).
- :mod:`.devices`: devices and precision for each backend.
- :mod:`.batching`: token-budget batches of length-sorted texts.
- :mod:`.runners`: the torch, ONNX Runtime and OpenVINO runners, and which backends are installed.
- :mod:`.exports`: the verified ONNX export cache the graph runners load.
- :mod:`.auto`: ``model.backend = "auto"``, decided by measurement (probe set: ``probe_texts.json``).
- :mod:`.query`: the checked ONNX query path for search.
"""
