"""Sources: what a source root holds and which of its files a run reads (plain Python, no Prefect).

The modules here are light on purpose: :mod:`embedpipe.config` imports :mod:`.kinds` for its
defaults, and the cheap CLI commands import config without loading pyarrow.

- :mod:`.kinds`: the supported file kinds by extension (the one list).
- :mod:`.globs`: the include/exclude filter on paths relative to a source root.
- :mod:`.files`: list, stat and open the files of a folder or an ``s3://`` prefix (imports pyarrow).
"""
