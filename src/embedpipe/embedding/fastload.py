"""Loading a cached export without torch: the export, its tokenizer, and a stored reference.

An ONNX or OpenVINO embedder runs an export of the model (:mod:`embedpipe.embedding.exports`),
and checks it on every load against the torch model on a few sentences. Loading torch,
transformers and sentence-transformers for that check alone costs about 370 MB of memory and
seconds of imports in every process that embeds. So once an export has passed the check against
torch, the check's inputs are kept beside it in ``runner-check.json``: the torch model's vectors
for the verification sentences, and the tokenizer's definition and settings (after checking that the
``tokenizers`` package alone tokenizes exactly as the Hugging Face tokenizer does). A later process
loads the export with the ``tokenizers`` package and runs the same check against the stored vectors:
the same floor, the same sentences, no torch.

The record is trusted only while it describes the export on disk (the manifest's digest of
``model.onnx``) and the model (weights hash, export kind); anything else falls back to the loading
path through sentence-transformers, which checks against torch and writes the record again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedpipe.embedding.exports import (
    VERIFY_TEXTS,
    ExportKey,
    cached_export_problem,
    verify_against,
    write_atomic,
)

log = logging.getLogger(__name__)

RECORD_FILE = "runner-check.json"
RECORD_RECIPE = 1
"""Bumped when the record or the fast loading path changes: older records are then ignored."""

# Tokenizer probes: the verification sentences, leading/trailing spaces, accents and CJK, and one
# longer than any model's sequence length (truncation), tokenized alone and as one padded batch.
TOKENIZER_PROBES = (
    *VERIFY_TEXTS,
    "  leading and trailing spaces  ",
    "Überprüfung der Qualität — café, naïve, 東京 向量",
    " ".join(["token"] * 600),
)


class FastTokenizer:
    """The part of a Hugging Face fast tokenizer the export runners call, on ``tokenizers`` alone.

    Called as the runners call the Hugging Face tokenizer: ``tok(texts, padding=True,
    truncation=True, max_length=n, return_tensors="np")`` pads to the longest text on the right
    and truncates to ``n`` tokens, special tokens included.
    """

    padding_side = "right"

    def __init__(self, definition: str, pad_id: int, pad_token: str) -> None:
        from tokenizers import Tokenizer

        self.definition = definition
        self.pad_token_id = int(pad_id)
        self.pad_token = str(pad_token)
        self._plain = Tokenizer.from_str(definition)
        self._plain.no_truncation()
        self._plain.no_padding()
        self._batch: dict[int, Any] = {}  # one configured copy per max_length (no shared mutation)

    def _configured(self, max_length: int) -> Any:
        tok = self._batch.get(max_length)
        if tok is None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_str(self.definition)
            tok.enable_truncation(max_length=max_length)
            tok.enable_padding(pad_id=self.pad_token_id, pad_token=self.pad_token)
            self._batch[max_length] = tok
        return tok

    def __call__(
        self,
        texts: str | Sequence[str],
        padding: bool = False,
        truncation: bool = False,
        max_length: int | None = None,
        add_special_tokens: bool = True,
        return_tensors: str | None = None,
    ) -> dict[str, Any]:
        single = isinstance(texts, str)
        batch = [texts] if isinstance(texts, str) else list(texts)
        if padding and truncation and max_length:
            encs = self._configured(int(max_length)).encode_batch(
                batch, add_special_tokens=add_special_tokens
            )
        elif not padding and not truncation:
            encs = self._plain.encode_batch(batch, add_special_tokens=add_special_tokens)
        else:  # the runners call only the two forms above
            raise ValueError("FastTokenizer pads and truncates together, or neither")
        out: dict[str, Any] = {
            "input_ids": [e.ids for e in encs],
            "attention_mask": [e.attention_mask for e in encs],
            "token_type_ids": [e.type_ids for e in encs],
        }
        if return_tensors == "np":
            return {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}
        return {k: v[0] for k, v in out.items()} if single else out


def tokenizer_facts(hf_tokenizer: Any, lower: bool, definition: str) -> dict[str, Any]:
    """What :class:`FastTokenizer` needs of a Hugging Face fast tokenizer (and the Transformer
    module's own lowercasing, ``lower``). ``definition``: its backend's JSON as loaded (the model
    card's), before any call set truncation or padding on it."""
    return {
        "definition": definition,
        "pad_id": int(hf_tokenizer.pad_token_id or 0),
        "pad_token": str(hf_tokenizer.pad_token or "[PAD]"),
        "padding_side": str(getattr(hf_tokenizer, "padding_side", "right")),
        "lower": bool(lower),
    }


def same_tokens(hf_tokenizer: Any, fast: FastTokenizer, max_length: int) -> bool:
    """Whether ``fast`` gives exactly the Hugging Face tokenizer's inputs on the probes, one by one and
    as one padded batch."""
    texts = list(TOKENIZER_PROBES)
    for group in [[t] for t in texts] + [texts]:
        want = hf_tokenizer(group, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        got = fast(group, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        for name in ("input_ids", "attention_mask"):
            if not np.array_equal(np.asarray(want[name], dtype=np.int64), got[name]):
                return False
    return True


def tokenizer_file(folder: Path, definition: str) -> str:
    """Keep a tokenizer definition in ``folder`` (once per definition); its file name."""
    name = f"tokenizer-{hashlib.sha256(definition.encode()).hexdigest()[:16]}.json"
    if not (folder / name).is_file():
        write_atomic(folder / name, definition)
    return name


def write_record(
    folder: Path,
    key: ExportKey,
    facts: Mapping[str, Any],
    max_length: int,
    reference: np.ndarray,
    hf_tokenizer: Any,
) -> bool:
    """Record, beside a verified export, what loading it without torch needs.

    ``reference``: the torch model's unit vectors for :data:`VERIFY_TEXTS`. Written only where
    the ``tokenizers`` package reproduces the Hugging Face tokenizer (:func:`same_tokens`) and
    pads on the right. Returns whether a record was written; never raises for an unwritable cache.
    """
    if facts["padding_side"] != "right":
        return False
    try:
        fast = FastTokenizer(facts["definition"], facts["pad_id"], facts["pad_token"])
        if not same_tokens(hf_tokenizer, fast, max_length):
            log.info("no torch-free loading for %s: tokenizers alone tokenizes differently", key.name)
            return False
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        record = {
            "recipe": RECORD_RECIPE,
            "name": key.name,
            "weights_hash": key.weights_hash,
            "kind": key.kind,
            "export_sha256": manifest.get("sha256"),
            "max_length": int(max_length),
            "lower": bool(facts["lower"]),
            "pad_id": int(facts["pad_id"]),
            "pad_token": str(facts["pad_token"]),
            "tokenizer_file": tokenizer_file(folder, facts["definition"]),
            "texts_sha256": hashlib.sha256(json.dumps(list(VERIFY_TEXTS)).encode()).hexdigest(),
            "reference": np.asarray(reference, dtype=np.float32).tolist(),
        }
        write_atomic(folder / RECORD_FILE, json.dumps(record))
        return True
    except Exception as e:  # best effort: the next load goes through torch again
        log.warning("torch-free loading record not written in %s: %s: %s", folder, type(e).__name__, e)
        return False


def read_record(folder: Path, key: ExportKey) -> dict[str, Any] | str:
    """The record for this export, or why it cannot be used."""
    problem = cached_export_problem(folder, key)
    if problem is not None:
        return problem
    try:
        record = json.loads((folder / RECORD_FILE).read_text(encoding="utf-8"))
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no torch-free loading record yet"
    except (OSError, ValueError) as e:
        return f"record unreadable ({type(e).__name__})"
    if not isinstance(record, dict) or record.get("recipe") != RECORD_RECIPE:
        return "record of another recipe"
    want = {"name": key.name, "weights_hash": key.weights_hash, "kind": key.kind}
    if any(record.get(k) != v for k, v in want.items()):
        return "record made for another model or export"
    if record.get("export_sha256") != manifest.get("sha256"):
        return "record made for another export"
    if record.get("texts_sha256") != hashlib.sha256(json.dumps(list(VERIFY_TEXTS)).encode()).hexdigest():
        return "record made with other verification sentences"
    return record


def load_tokenizer(folder: Path, record: Mapping[str, Any]) -> tuple[FastTokenizer, dict[str, Any]]:
    """The recorded tokenizer, and its facts (as :func:`tokenizer_facts` gives them)."""
    definition = (folder / str(record["tokenizer_file"])).read_text(encoding="utf-8")
    pad_id, pad_token = int(record["pad_id"]), str(record["pad_token"])
    facts = {
        "definition": definition,
        "pad_id": pad_id,
        "pad_token": pad_token,
        "padding_side": "right",
        "lower": bool(record["lower"]),
    }
    return FastTokenizer(definition, pad_id, pad_token), facts


def check_runner(run: Any, record: Mapping[str, Any], kind: str) -> float:
    """The export check of :func:`~embedpipe.embedding.exports.verify_export`, against the stored
    torch vectors. Raises :class:`~embedpipe.errors.ModelError` below the backend's floor."""
    return verify_against(run, np.asarray(record["reference"], dtype=np.float32), kind)
