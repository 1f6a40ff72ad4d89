"""embedpipe: keep a corpus's embeddings fresh, versioned and searchable.

The package is layered: ``config``, ``schemas``, ``resources`` and the plain modules
(``readers``, ``chunking``, ``progress``) never import Prefect; only ``tasks`` and ``flows`` do.
"""

import os as _os

# Lance's Rust logger warns on every table creation ("No existing dataset ... will be created"),
# which is expected here and would otherwise land on a successful run's console.
_os.environ.setdefault("LANCEDB_LOG", "error")

__version__ = "0.1.0"
