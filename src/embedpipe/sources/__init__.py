"""Sources: which files a run reads and what documents they hold (plain Python, no Prefect).

The ``ingest`` task (:mod:`embedpipe.tasks.sources`) wraps this stage. This ``__init__`` imports
nothing on purpose: :mod:`embedpipe.config` imports :mod:`.kinds` for its defaults, and the cheap
CLI commands import config without loading pyarrow; import from the modules.

- :mod:`.kinds`: the supported file kinds by extension (the one list).
- :mod:`.globs`: the include/exclude filter on paths relative to a source root.
- :mod:`.guard`: keep discovery inside its source root (symlinks, object keys, ``O_NOFOLLOW``).
- :mod:`.files`: list, stat and open the files of a folder or an ``s3://`` prefix (imports pyarrow).
- :mod:`.discover`: the files (and parts of big files) under the given sources, grouped into shards.
- :mod:`.text`: bytes to clean text (encodings, control characters, the visible text of HTML).
- :mod:`.parse`: a shard of files into a documents table, per format, with rejects for bad input.
- :mod:`.docids`: document ids, built and read back in one place.
"""
