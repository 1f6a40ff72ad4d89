"""The ONNX export cache: exports made locally from the loaded model, once, and verified.

Exports are made from the loaded model (no download) and cached under ``model.export_dir``
(default ``$HF_HOME/embedpipe-exports``, beside the Hugging Face model cache). Each export carries
a manifest (model weights hash, recipe, library versions, file digest); an export whose manifest,
digest or loadability does not check out is rebuilt. The ONNX Runtime and OpenVINO runners
(:mod:`embedpipe.embedding.runners`) load them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedpipe.errors import ConfigError, EmbedpipeError, ModelError

log = logging.getLogger(__name__)

EXPORT_RECIPE = 1
"""Bumped whenever the export or quantization recipe changes: older exports are then rebuilt."""

# Sentences an export must reproduce before it is trusted (cosine against the torch model).
VERIFY_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Vector databases store embeddings and answer nearest-neighbour queries.",
    "Prefect flows chain tasks; each task can be retried on its own.",
    "Ein kurzer deutscher Satz über das Wetter in Berlin.",
    "a",
    "Embeddings turn symbols a machine cannot read into dense vectors in which similar things sit "
    "close together; they are the base layer of semantic search and recommendation.",
)
VERIFY_MIN_COS = {"onnx": 0.9999, "onnx-int8": 0.97, "openvino": 0.99}


def default_export_dir() -> Path:
    """``$HF_HOME/embedpipe-exports``: beside the Hugging Face model cache."""
    try:
        from huggingface_hub import constants

        home = Path(constants.HF_HOME)
    except Exception:  # pragma: no cover - huggingface_hub comes with sentence-transformers
        home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "embedpipe-exports"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[-60:] or "model"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package_versions(*packages: str) -> dict[str, str]:
    """The installed version of each package (``""`` where it is not installed)."""
    import importlib.metadata as md

    out = {}
    for pkg in packages:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = ""
    return out


def exporter_versions() -> dict[str, str]:
    """The versions of the libraries that make and run exports."""
    return package_versions("torch", "onnx", "onnxruntime", "sentence-transformers", "transformers")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, readable by all users
    (a shared cache): readers never see a half-written file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class ExportKey:
    """What an export is made from; a cached export is valid only for the same key."""

    name: str
    weights_hash: str
    kind: str
    """``onnx`` (fp32) or ``onnx-int8``."""

    def folder(self, root: Path) -> Path:
        return root / f"{_slug(self.name)}-{self.weights_hash[:16]}" / f"{self.kind}-r{EXPORT_RECIPE}"

    def manifest(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "weights_hash": self.weights_hash,
            "kind": self.kind,
            "recipe": EXPORT_RECIPE,
            # recorded for diagnosis (cached_export_problem compares name, weights, kind, recipe)
            "torch": exporter_versions()["torch"],
            "transformers": exporter_versions()["transformers"],
        }


def cached_export_problem(folder: Path, key: ExportKey) -> str | None:
    """Why the export in ``folder`` cannot be used, or ``None`` when it can.

    Checks the manifest (same model weights, recipe and exporting library versions) and the digest
    of the ONNX file; whether the runtime can load it is checked by the caller.
    """
    model = folder / "model.onnx"
    manifest = folder / "manifest.json"
    if not model.is_file() or not manifest.is_file():
        return "no export yet"
    try:
        recorded = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"manifest unreadable ({type(e).__name__})"
    if not isinstance(recorded, dict):
        return "manifest malformed"
    want = key.manifest()
    # Library versions are recorded for diagnosis only: an export that still loads and reproduces
    # the model (checked by the caller) stays valid across upgrades, and environments sharing a
    # cache do not rebuild each other's exports.
    for field in ("name", "weights_hash", "kind", "recipe"):
        if recorded.get(field) != want[field]:
            return f"stale: {field} was {recorded.get(field)!r}, now {want[field]!r}"
    if recorded.get("sha256") != _sha256(model):
        return "model.onnx does not match its recorded digest (truncated or modified)"
    return None


def export_onnx(st_model: Any, folder: Path, key: ExportKey, model_dir: Path) -> None:
    """Export the model in ``model_dir`` to ``folder/model.onnx`` (atomically), in a child process.

    Tracing and optimizing the graph take about 850 MB more than the loaded model, which a
    process does not give back; the child's exit does (:func:`export_here` is the export).
    ``st_model`` is the caller's loaded model, unused here (the child loads its own copy).

    Raises:
        ModelError: The child failed; the message ends with its last lines of output.
    """
    from embedpipe.embedding.apart import run_apart

    request = {"folder": str(folder), "model_dir": str(model_dir), "key": asdict(key)}
    try:
        run_apart("embedpipe.embedding.exports:export_main", request, f"exporting model={key.name} to ONNX")
    except ModelError as e:
        raise ModelError(f"{e}; use model.backend=torch") from e


def export_main() -> None:
    """The exporting child process (:func:`export_onnx`)."""
    from embedpipe.embedding.apart import child_main

    def work(request: dict[str, Any]) -> None:
        export_here(None, Path(request["folder"]), ExportKey(**request["key"]), Path(request["model_dir"]))

    child_main(work)


def export_here(st_model: Any, folder: Path, key: ExportKey, model_dir: Path) -> None:
    """Export the sentence-transformers pipeline to ``folder/model.onnx`` (atomically).

    The whole pipeline is traced (transformer, pooling, dense, normalise), so the graph outputs
    sentence embeddings. Attention is exported in its eager form, which ONNX Runtime's transformer
    optimizer fuses into its own attention kernels; ``onnx-int8`` is then quantized dynamically
    (int8 weights per output channel; activations quantized per batch at run time).
    """
    import torch

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700: a shared cache must be readable by other users
    try:
        raw = tmp / "raw.onnx"
        eager = _eager_copy(model_dir, st_model)
        preprocess = getattr(eager, "preprocess", None) or eager.tokenize  # tokenize before ST 6
        features = preprocess(["An example sentence to trace.", "Another, longer one, with more tokens."])
        input_names = [k for k, v in features.items() if isinstance(v, torch.Tensor)]

        class _Pipeline(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, *args: Any) -> Any:
                feats = dict(zip(input_names, args, strict=True))
                return self.inner(feats)["sentence_embedding"]

        wrapper = _Pipeline(eager).eval()
        args = tuple(features[k].cpu() for k in input_names)
        axes = {k: {0: "batch", 1: "tokens"} for k in input_names}
        axes["sentence_embedding"] = {0: "batch"}
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                args,
                str(raw),
                input_names=input_names,
                output_names=["sentence_embedding"],
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
        optimized = _optimize(raw, tmp / "optimized.onnx", eager)
        if key.kind == "onnx-int8":
            _quantize(optimized, tmp / "model.onnx")
        else:
            optimized.replace(tmp / "model.onnx")
        _publish(tmp, folder, key)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, folder: Path, key: ExportKey) -> None:
    """Keep only ``model.onnx`` in ``tmp``, write its manifest, and move it to ``folder``."""
    for extra in tmp.iterdir():
        if extra.name != "model.onnx":
            extra.unlink()
    manifest = key.manifest() | {"sha256": _sha256(tmp / "model.onnx"), "created": time.time()}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.replace(folder)


def quantize_fp32_export(folder: Path, key: ExportKey) -> bool:
    """Make the ``onnx-int8`` export by quantizing a valid cached fp32 export of the same model.

    The fp32 export *is* the optimized graph that :func:`export_onnx` quantizes, so the result is
    the same as tracing again, without loading torch's exporter. Returns False when there is no
    valid fp32 export to start from.
    """
    fp32_key = ExportKey(key.name, key.weights_hash, "onnx")
    fp32 = folder.parent / fp32_key.folder(Path()).name
    if key.kind != "onnx-int8" or cached_export_problem(fp32, fp32_key) is not None:
        return False
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    tmp.chmod(0o755)
    try:
        _quantize(fp32 / "model.onnx", tmp / "model.onnx")
        _publish(tmp, folder, key)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


def _eager_copy(model_dir: Path, st_model: Any) -> Any:
    """The model again on the CPU in fp32, with eager attention (traceable, and fusable by ORT)."""
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(
            str(model_dir), device="cpu", local_files_only=True, model_kwargs={"attn_implementation": "eager"}
        ).eval()
    except Exception:  # a model whose architecture has no eager switch: trace it as it is
        import copy

        if st_model is None:
            return SentenceTransformer(str(model_dir), device="cpu", local_files_only=True).eval()
        return copy.deepcopy(st_model).to("cpu").float().eval()


def _optimize(raw: Path, out: Path, st_model: Any) -> Path:
    """Fuse attention, layer norm and GELU with ONNX Runtime's transformer optimizer (BERT-like models)."""
    try:
        config = st_model[0].auto_model.config
        model_type = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "mpnet": "bert"}.get(
            config.model_type
        )
        if model_type is None:
            return raw
        from onnxruntime.transformers import optimizer

        with warnings.catch_warnings(), _quiet_logs():
            warnings.simplefilter("ignore")
            opt = optimizer.optimize_model(
                str(raw),
                model_type=model_type,
                num_heads=int(config.num_attention_heads),
                hidden_size=int(config.hidden_size),
                opt_level=1,
            )
        with _quiet_logs():
            opt.save_model_to_file(str(out))
        return out
    except Exception as e:  # the plain export still runs, only slower
        log.warning(
            "ONNX Runtime's transformer optimizer failed (%s: %s); using the plain export",
            type(e).__name__,
            e,
        )
        return raw


@contextmanager
def _quiet_logs(level: int = logging.INFO) -> Iterator[None]:
    """Silence the chatter of ONNX Runtime's optimizer and quantizer (they log to the root logger)."""
    previous = logging.root.manager.disable
    logging.disable(level)
    try:
        yield
    finally:
        logging.disable(previous)


def _quantize(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization: int8 weights per output channel, uint8 activations per batch.

    The first layer's feed-forward output projection stays in fp32: its inputs (after GELU) have the
    widest range of the network, and one per-tensor uint8 scale for them costs the most accuracy
    (mean cosine to torch 0.990 with it quantized, 0.9925 without, on the bundled model).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    names = [
        n.name for n in onnx.load(str(src), load_external_data=False).graph.node if n.op_type == "MatMul"
    ]
    exclude = [n for n in names if re.search(r"layer\.0/output/dense/MatMul$", n)]
    # (its one warning suggests shape pre-processing, which changes nothing for a fused BERT graph)
    with warnings.catch_warnings(), _quiet_logs(logging.WARNING):
        warnings.simplefilter("ignore")
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=exclude,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def reference_vectors(st_model: Any) -> np.ndarray:
    """The torch model's unit vectors for :data:`VERIFY_TEXTS` (what an export must reproduce)."""
    return np.asarray(
        st_model.encode(
            list(VERIFY_TEXTS), convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
        ),
        dtype=np.float32,
    )


def verify_against(run: Callable[[list[str]], np.ndarray], ref: np.ndarray, kind: str) -> float:
    """Lowest cosine between the runner's vectors for :data:`VERIFY_TEXTS` and ``ref``.

    Raises:
        ModelError: Below the backend's floor: the export does not reproduce the model.
    """
    got = run(list(VERIFY_TEXTS))
    got = got / np.maximum(np.linalg.norm(got, axis=1, keepdims=True), 1e-12)
    cos = float((got * ref).sum(axis=1).min()) if got.shape == ref.shape else float("nan")
    floor = VERIFY_MIN_COS[kind]
    if not np.isfinite(cos) or cos < floor:
        raise ModelError(
            f"the {kind} export does not reproduce the model: cosine to torch {cos:.4f} < {floor} on the "
            "verification sentences; use model.backend=torch for this model"
        )
    return cos


def verify_export(run: Callable[[list[str]], np.ndarray], st_model: Any, kind: str) -> float:
    """Lowest cosine between the runner's vectors and the torch model's on a few sentences.

    Raises:
        ModelError: Below the backend's floor: the export does not reproduce the model.
    """
    return verify_against(run, reference_vectors(st_model), kind)


def ensure_export(
    st_model: Any, model_dir: Path, key: ExportKey, root: Path, check: Callable[[Path], None]
) -> Path:
    """The folder of a usable export for ``key``, exporting (or re-exporting) it when needed.

    ``check`` loads the export in its runtime and verifies it; an export that fails it is rebuilt
    once. Concurrent processes wait on a file lock instead of exporting twice.
    """
    from filelock import FileLock, Timeout

    folder = key.folder(root)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"model.export_dir={root} is not writable ({type(e).__name__}: {e}); set model.export_dir "
            "(EMBEDPIPE_MODEL__EXPORT_DIR) to a writable folder"
        ) from e
    try:
        with FileLock(str(folder) + ".lock", timeout=900):
            return _ensure_locked(st_model, model_dir, key, folder, check)
    except Timeout as e:
        raise ModelError(
            f"another process has held the export lock {folder}.lock for 15 minutes; if none is "
            "exporting, delete the lock file"
        ) from e


def _ensure_locked(
    st_model: Any, model_dir: Path, key: ExportKey, folder: Path, check: Callable[[Path], None]
) -> Path:
    problem = cached_export_problem(folder, key)
    if problem is None:
        try:
            check(folder)
            log.info("using cached %s export %s", key.kind, folder)
            return folder
        except EmbedpipeError:
            # a device the runtime cannot use, or an export that loads but does not reproduce
            # the model: exporting again by the same recipe cannot help
            raise
        except Exception as e:
            problem = f"cached export failed to load ({type(e).__name__}: {e})"
    if problem != "no export yet":
        log.warning("rebuilding the %s export in %s: %s", key.kind, folder, problem)
    t0 = time.perf_counter()
    try:
        if not quantize_fp32_export(folder, key):
            export_onnx(st_model, folder, key, model_dir)
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(
            f"cannot export model={key.name} to ONNX ({type(e).__name__}: {e}); use model.backend=torch"
        ) from e
    try:
        check(folder)
    except EmbedpipeError:
        raise
    except Exception as e:
        raise ModelError(
            f"the fresh {key.kind} export in {folder} does not load ({type(e).__name__}: {e}); "
            "use model.backend=torch"
        ) from e
    log.info("exported %s in %.1fs to %s", key.kind, time.perf_counter() - t0, folder)
    return folder
