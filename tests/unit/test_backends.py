"""Inference backends without loading a model: token-budget batches, out-of-memory halving, the
torch runner's device scheduling, precision and device settings, the backend in the model identity,
and the ONNX export cache's bookkeeping.

Fast: tiny fake model objects stand in for sentence-transformers (the real model runs in
``tests/integration/test_backends.py``); LanceDB is real where a table is involved.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from embedpipe.config import ModelSettings, get_settings
from embedpipe.embedding import exports, runners
from embedpipe.embedding.batching import default_batch_tokens, token_batches
from embedpipe.embedding.devices import resolve_devices, resolve_precision
from embedpipe.embedding.embedder import SentenceTransformerEmbedder, get_embedder, settings_for_table
from embedpipe.embedding.exports import (
    EXPORT_RECIPE,
    ExportKey,
    cached_export_problem,
    ensure_export,
    verify_export,
)
from embedpipe.embedding.runners import TorchRunner, is_cuda_oom, run_halving
from embedpipe.errors import ConfigError, ModelError, ModelMismatchError
from embedpipe.schemas import ModelIdentity
from embedpipe.store import Store
from tests.fakes import FakeEmbedder, RegexTokens
from tests.helpers import make_settings, write

# --------------------------------------------------------------------------- token_batches


def check_batches(lengths: np.ndarray, budget: int, max_batch: int, batches: list[np.ndarray]) -> None:
    """Every property token_batches promises."""
    flat = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    assert sorted(flat.tolist()) == list(range(len(lengths))), "every index exactly once"
    for b in batches:
        assert 1 <= len(b) <= max_batch
        if len(b) > 1:
            assert len(b) * max(1, int(lengths[b].max())) <= budget, (b, lengths[b], budget)
    for prev, nxt in itertools.pairwise(batches):
        assert lengths[prev].max() <= lengths[nxt].min(), "batches go from short to long"


def test_token_batches_packs_short_texts_together_and_long_ones_alone() -> None:
    lengths = np.array([10, 300, 12, 11, 50, 9, 1000, 49], dtype=np.int64)
    batches = token_batches(lengths, budget=120, max_batch=8)
    check_batches(lengths, 120, 8, batches)
    as_lists = [b.tolist() for b in batches]
    # 4 texts of <= 12 tokens fit in 120 (4*12=48), the 5th (49) would make 5*49 > 120
    assert as_lists[0] == [5, 0, 3, 2]
    assert as_lists[1] == [7, 4]  # 2*50 = 100 <= 120
    assert as_lists[-2:] == [[1], [6]]  # each over the budget: a batch of its own


def test_token_batches_respects_max_batch_and_edge_inputs() -> None:
    same = np.full(10, 4, dtype=np.int64)
    assert [len(b) for b in token_batches(same, budget=10_000, max_batch=3)] == [3, 3, 3, 1]
    assert token_batches(np.array([], dtype=np.int64), budget=100, max_batch=4) == []
    assert [b.tolist() for b in token_batches(np.array([500]), budget=10, max_batch=4)] == [[0]]
    # budget below every text: one text per batch, shortest first
    assert [b.tolist() for b in token_batches(np.array([30, 20, 40]), budget=5, max_batch=9)] == [
        [1],
        [0],
        [2],
    ]
    # zero-length texts still cost at least one token each
    zeros = token_batches(np.zeros(6, dtype=np.int64), budget=4, max_batch=100)
    assert [len(b) for b in zeros] == [4, 2]


def test_token_batches_property_over_random_inputs() -> None:
    rng = np.random.default_rng(20240611)
    for _ in range(300):
        n = int(rng.integers(0, 200))
        lengths = rng.integers(0, 600, size=n)
        if rng.random() < 0.3:  # many equal lengths: ties must keep every index once
            lengths = rng.choice([3, 64, 256], size=n)
        budget = int(rng.integers(16, 5000))
        max_batch = int(rng.integers(1, 70))
        batches = token_batches(lengths, budget, max_batch)
        check_batches(lengths, budget, max_batch, batches)
        # greedy: a batch stops only when the next text would break the budget or max_batch
        for b, nxt in itertools.pairwise(batches):
            grown = len(b) + 1
            assert grown > max_batch or grown * max(1, int(lengths[nxt[0]])) > budget


# --------------------------------------------------------------------------- OOM halving


def oom() -> torch.cuda.OutOfMemoryError:
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def vec_of(text: str) -> np.ndarray:
    """A deterministic 3-d vector per text ``t<N>``."""
    n = int(text[1:])
    return np.array([n, n * 2 + 1, -n], dtype=np.float32)


def oom_forward(limit: int, calls: list[int] | None = None) -> Callable[[list[str]], np.ndarray]:
    def forward(texts: list[str]) -> np.ndarray:
        if calls is not None:
            calls.append(len(texts))
        if len(texts) > limit:
            raise oom()
        return np.stack([vec_of(t) for t in texts])

    return forward


def test_is_cuda_oom() -> None:
    assert is_cuda_oom(oom())
    assert is_cuda_oom(RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0)"))
    assert is_cuda_oom(RuntimeError("CUDA error: out of memory"))
    assert not is_cuda_oom(RuntimeError("shape mismatch"))
    assert not is_cuda_oom(ValueError("out of memory"))  # only runtime errors say it
    assert not is_cuda_oom(MemoryError())


def test_run_halving_splits_until_it_fits_and_keeps_order() -> None:
    texts = [f"t{i}" for i in range(10)]
    sizes: list[int] = []
    calls: list[int] = []
    out = run_halving(oom_forward(3, calls), texts, sizes.append)
    np.testing.assert_array_equal(out, np.stack([vec_of(t) for t in texts]))
    assert sizes == [10, 5, 5]  # 10 -> 5 + 5, each 5 -> 2 + 3
    assert calls == [10, 5, 2, 3, 5, 2, 3]
    # fits at once: no split, no report
    sizes.clear()
    np.testing.assert_array_equal(run_halving(oom_forward(99), texts, sizes.append), out)
    assert sizes == []
    # on_oom is optional
    np.testing.assert_array_equal(run_halving(oom_forward(1), texts), out)


def test_run_halving_warns_about_each_split(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="embedpipe.embedding.runners")
    run_halving(oom_forward(4), [f"t{i}" for i in range(8)])
    assert "CUDA out of memory on a batch of 8 chunks: retrying as 4 + 4" in caplog.text


def test_run_halving_single_text_oom_is_a_model_error() -> None:
    sizes: list[int] = []
    with pytest.raises(ModelError, match=r"single chunk; lower chunk\.tokens") as info:
        run_halving(oom_forward(0), ["t1", "t2"], sizes.append)
    assert isinstance(info.value.__cause__, torch.cuda.OutOfMemoryError)
    assert sizes == [2, 1]


def test_run_halving_lets_other_errors_through_unchanged() -> None:
    boom = ValueError("tokenizer exploded")
    other_runtime = RuntimeError("expected scalar type Float but found Half")
    for exc in (boom, other_runtime):

        def forward(texts: list[str], exc: Exception = exc) -> np.ndarray:
            raise exc

        sizes: list[int] = []
        with pytest.raises(type(exc)) as info:
            run_halving(forward, ["t1", "t2", "t3"], sizes.append)
        assert info.value is exc and sizes == []


def test_run_halving_frees_the_failed_attempt_before_retrying() -> None:
    """PyTorch's FAQ: recover from OOM outside the except clause, or the memory cannot be freed."""

    class Activations:
        """Stands in for the tensors a forward pass allocates before it runs out of memory."""

    attempts: list[weakref.ref[Activations]] = []
    held_during_success: list[int] = []

    def forward(texts: list[str]) -> np.ndarray:
        acts = Activations()
        attempts.append(weakref.ref(acts))
        if len(texts) > 2:
            raise oom()
        held_during_success.append(sum(r() is not None for r in attempts[:-1]))
        return np.stack([vec_of(t) for t in texts])

    out = run_halving(forward, [f"t{i}" for i in range(8)])
    np.testing.assert_array_equal(out, np.stack([vec_of(f"t{i}") for i in range(8)]))
    assert held_during_success == [0, 0, 0, 0]


# --------------------------------------------------------------------------- TorchRunner


class FakeSTModel:
    """Just the ``encode`` of a sentence-transformers model: fp16 tensors, OOM above ``limit`` texts."""

    def __init__(self, limit: int = 1_000_000, barrier: threading.Barrier | None = None) -> None:
        self.limit = limit
        self.barrier = barrier
        self.calls: list[list[str]] = []
        self.kwargs: list[dict[str, Any]] = []

    def encode(
        self,
        texts: list[str],
        batch_size: int,
        convert_to_numpy: bool,
        convert_to_tensor: bool,
        normalize_embeddings: bool,
        show_progress_bar: bool,
    ) -> torch.Tensor:
        if self.barrier is not None:
            self.barrier.wait()  # both replicas must be working at the same time
            self.barrier = None
        self.kwargs.append(
            {
                "batch_size": batch_size,
                "convert_to_numpy": convert_to_numpy,
                "convert_to_tensor": convert_to_tensor,
                "normalize_embeddings": normalize_embeddings,
                "show_progress_bar": show_progress_bar,
            }
        )
        if len(texts) > self.limit:
            raise oom()
        self.calls.append(list(texts))
        return torch.tensor(np.stack([vec_of(t) for t in texts]), dtype=torch.float16)


def collect(runner: Any, texts: list[str], batches: list[np.ndarray]) -> tuple[np.ndarray, list[list[int]]]:
    out = np.full((len(texts), 3), np.nan, dtype=np.float32)
    seen: list[list[int]] = []
    for idx, vecs in runner.run_many(texts, batches):
        assert vecs.dtype == np.float32 and vecs.shape == (len(idx), 3)
        out[idx] = vecs
        seen.append(sorted(idx.tolist()))
    return out, seen


def test_torch_runner_halves_on_oom_and_reports_it() -> None:
    texts = [f"t{i}" for i in range(23)]
    batches = token_batches(np.full(23, 10), budget=80, max_batch=64)  # batches of 8, 8, 7
    model = FakeSTModel(limit=3)
    sizes: list[int] = []
    runner = TorchRunner([model], ["cpu"], on_oom=sizes.append)
    out, seen = collect(runner, texts, batches)
    np.testing.assert_array_equal(out, np.stack([vec_of(t) for t in texts]))
    assert sorted(i for b in seen for i in b) == list(range(23))
    assert sizes[:3] == [8, 4, 4] and 7 in sizes  # every failing size was reported
    assert max(len(c) for c in model.calls) <= 3
    # vectors come back pooled, not normalised, as tensors (converted by the runner)
    assert model.kwargs[0] == {
        "batch_size": 8,
        "convert_to_numpy": False,
        "convert_to_tensor": True,
        "normalize_embeddings": False,
        "show_progress_bar": False,
    }


def test_torch_runner_spreads_batches_over_replicas() -> None:
    texts = [f"t{i}" for i in range(200)]
    batches = token_batches(np.arange(200) % 17 + 1, budget=64, max_batch=16)
    assert len(batches) > 10
    barrier = threading.Barrier(2, timeout=10)  # a replica left idle breaks the barrier
    models = [FakeSTModel(limit=5, barrier=barrier), FakeSTModel(barrier=barrier)]
    sizes: list[int] = []
    runner = TorchRunner(models, ["cuda:0", "cuda:1"], dtype="fp16", on_oom=sizes.append)
    out, seen = collect(runner, texts, batches)
    np.testing.assert_array_equal(out, np.stack([vec_of(t) for t in texts]))
    # every batch exactly once, in one piece (splits happen inside a replica)
    assert sorted(seen) == sorted(sorted(b.tolist()) for b in batches)
    assert all(m.calls for m in models), "both replicas got work"
    done = sorted(t for m in models for c in m.calls for t in c)
    assert done == sorted(texts)  # no text embedded twice
    assert sizes and all(s > 5 for s in sizes)  # only replica 0 ran out of memory
    assert runner.run(["t7"], k=1).tolist() == [vec_of("t7").tolist()]


def test_embedder_encode_orders_normalises_and_shrinks_batches_after_oom() -> None:
    """SentenceTransformerEmbedder.encode around a runner, without loading a model."""
    emb = SentenceTransformerEmbedder.__new__(SentenceTransformerEmbedder)
    emb.settings = ModelSettings(name="fake-weights", device="cpu")
    emb._lock = threading.Lock()
    emb.identity = ModelIdentity(name="x", weights_hash="0" * 64, dim=3, max_seq_length=64, normalize=True)
    emb.special_tokens = 2
    emb.tokenizer = RegexTokens()  # type: ignore[assignment]
    emb.batch_tokens = 4096
    model = FakeSTModel(limit=4)
    emb.runner = TorchRunner([model], ["cpu"], on_oom=emb._shrink)
    texts = [f"t{i}" + " word" * (i % 7) for i in range(30)]
    vecs = emb.encode(
        [t.split()[0] for t in texts], batch_size=64, lengths=np.array([i % 7 for i in range(30)])
    )
    ref = np.stack([vec_of(t.split()[0]) for t in texts])
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(vecs, ref, rtol=1e-6)
    assert emb.batch_tokens < 4096  # the OOM hook shrank the budget for later batches
    assert emb.encode([], batch_size=4).shape == (0, 3)


# --------------------------------------------------------------------------- settings


def test_resolve_precision_matrix() -> None:
    def rp(backend: str, precision: str, device: str) -> str:
        return resolve_precision(ModelSettings(backend=backend, precision=precision), device)

    assert rp("torch", "auto", "cuda") == "fp16"
    assert rp("torch", "auto", "cuda:1") == "fp16"
    assert rp("torch", "auto", "cpu") == "fp32"
    assert rp("torch", "bf16", "cpu") == "bf16"
    assert rp("torch", "fp16", "cuda") == "fp16"
    assert rp("torch", "fp32", "cuda") == "fp32"
    # fp16 with device=auto on a machine without a GPU
    with pytest.raises(ConfigError, match="precision=fp16 needs a GPU"):
        rp("torch", "fp16", "cpu")
    for backend, auto in (("onnx", "fp32"), ("onnx-int8", "int8")):
        assert rp(backend, "auto", "cpu") == auto
        assert rp(backend, "fp32", "cpu") == auto
    assert rp("openvino", "auto", "cpu") == "auto"  # OpenVINO decides, the runner reports it
    assert rp("openvino", "bf16", "cpu") == "bf16"


def test_default_batch_tokens() -> None:
    assert default_batch_tokens("torch", "cpu") == 4096
    assert default_batch_tokens("openvino", "cpu") == 4096
    assert default_batch_tokens("onnx", "cpu") == 1024
    assert default_batch_tokens("onnx-int8", "cpu") == 1024
    assert default_batch_tokens("torch", "cuda") == 65_536
    assert default_batch_tokens("onnx", "cuda:1") == 65_536
    assert default_batch_tokens("torch", "mps") == 4096


def test_model_devices_validation() -> None:
    assert ModelSettings(devices=[" CUDA ", "cuda:1"]).devices == ["cuda:0", "cuda:1"]
    assert ModelSettings(devices=["cpu"]).devices == ["cpu"]
    assert ModelSettings().devices == []
    for bad in (["gpu0"], ["cuda:x"], ["mps"], ["auto"]):
        with pytest.raises(ConfigError, match=r"model\.devices.*unknown device"):
            get_settings({"model": {"devices": bad}})
    with pytest.raises(ConfigError, match="lists a device twice"):
        get_settings({"model": {"devices": ["cuda", "cuda:0"]}})
    with pytest.raises(ConfigError, match="lists a device twice"):
        get_settings({"model": {"devices": ["cuda:1", "cuda:1"]}})


def test_resolve_devices() -> None:
    assert resolve_devices(ModelSettings(device="cpu")) == ["cpu"]
    assert resolve_devices(ModelSettings(devices=["cpu"])) == ["cpu"]
    # no CUDA: refused as unavailable; with CUDA: refused as a device this machine lacks
    with pytest.raises(ConfigError, match="cuda:99"):
        resolve_devices(ModelSettings(devices=["cuda:99"]))
    if not torch.cuda.is_available():
        assert resolve_devices(ModelSettings(device="auto")) in (["cpu"], ["mps"])


def test_backend_setting_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    assert get_settings({"model": {"backend": "onnx-int8"}}).model.backend == "onnx-int8"
    assert get_settings().model.backend == "auto" and get_settings().model.precision == "auto"
    with pytest.raises(ConfigError, match=r"model\.backend \(get_settings override\).*tensorrt"):
        get_settings({"model": {"backend": "tensorrt"}})
    monkeypatch.setenv("EMBEDPIPE_MODEL__BACKEND", "onnx_int8")
    with pytest.raises(ConfigError, match=r"model\.backend"):
        get_settings()
    monkeypatch.setenv("EMBEDPIPE_MODEL__BACKEND", "openvino")
    monkeypatch.setenv("EMBEDPIPE_MODEL__PRECISION", "bf16")
    monkeypatch.setenv("EMBEDPIPE_MODEL__BATCH_TOKENS", "2048")
    m = get_settings().model
    assert (m.backend, m.precision, m.batch_tokens) == ("openvino", "bf16", 2048)
    with pytest.raises(ConfigError, match=r"model\.precision"):
        get_settings({"model": {"precision": "int8"}})
    with pytest.raises(ConfigError, match=r"model\.batch_tokens"):
        get_settings({"model": {"batch_tokens": 8}})


def test_require_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"model\.backend='tensorrt' is unknown"):
        runners.require_backend("tensorrt")
    runners.require_backend("torch")
    monkeypatch.setattr(runners, "have_module", lambda name: name != "openvino")
    with pytest.raises(ConfigError, match=r"needs openvino.*pip install 'embedpipe\[openvino\]'"):
        runners.require_backend("openvino")
    runners.require_backend("onnx-int8")
    monkeypatch.setattr(runners, "have_module", lambda name: name != "onnxruntime")
    with pytest.raises(ConfigError, match=r"needs onnxruntime.*pip install 'embedpipe\[onnx\]'"):
        runners.require_backend("onnx-int8")


def test_embedder_cache_keys_on_backend_not_on_batch_size() -> None:
    a = get_embedder(ModelSettings(name="fake:8:backends", backend="torch"))
    b = get_embedder(ModelSettings(name="fake:8:backends", backend="onnx-int8"))
    c = get_embedder(ModelSettings(name="fake:8:backends", backend="torch", batch_size=3))
    d = get_embedder(ModelSettings(name="fake:8:backends", backend="torch", precision="bf16"))
    assert a is c
    assert a is not b and a is not d


def test_settings_for_table_follow_the_tables_backend() -> None:
    """Queries and checks embed with the table's model and backend, whatever is configured now."""
    configured = ModelSettings(
        name="other/model", device="cuda", devices=["cuda:0", "cuda:1"], precision="fp16", normalize=False
    )
    torch_table = ModelIdentity(name="m", weights_hash="a" * 64, dim=8, max_seq_length=64, normalize=True)
    m = settings_for_table(configured, torch_table)
    assert (m.name, m.normalize, m.backend) == ("m", True, "torch")
    assert (m.device, m.devices, m.precision) == (
        "cuda",
        ["cuda:0", "cuda:1"],
        "fp16",
    )  # torch: as configured
    for backend in ("onnx", "onnx-int8"):
        m = settings_for_table(configured, torch_table.model_copy(update={"backend": backend}))
        assert (m.name, m.backend, m.device, m.devices, m.precision) == ("m", backend, "cpu", [], "auto")
        resolve_precision(m, m.device)  # a valid combination: no ConfigError
    m = settings_for_table(configured, torch_table.model_copy(update={"backend": "openvino"}))
    assert (m.backend, m.device, m.devices) == ("openvino", "cpu", [])
    assert configured.backend == "auto" and configured.name == "other/model"  # not modified in place


# --------------------------------------------------------------------------- identity


def test_model_id_carries_the_backend() -> None:
    base = ModelIdentity(
        name="m", weights_hash="abcdef0123456789" * 4, dim=8, max_seq_length=128, normalize=True
    )
    assert base.backend == "torch" and base.model_id == "m@abcdef012345"
    for backend in ("onnx", "onnx-int8", "openvino"):
        assert base.model_copy(update={"backend": backend}).model_id == f"m@abcdef012345+{backend}"


def test_identity_metadata_round_trip_keeps_backend_and_precision() -> None:
    ident = ModelIdentity(
        name="m",
        weights_hash="f" * 64,
        dim=384,
        max_seq_length=256,
        normalize=False,
        backend="onnx-int8",
        precision="int8",
    )
    md = ident.table_metadata()
    assert md["embedpipe.model.backend"] == "onnx-int8" and md["embedpipe.model.precision"] == "int8"
    back = ModelIdentity.from_table_metadata(md)
    assert back == ident and back is not None and back.model_id.endswith("+onnx-int8")
    # tables written before backends existed read as torch fp32
    old = {k: v for k, v in md.items() if k not in {"embedpipe.model.backend", "embedpipe.model.precision"}}
    legacy = ModelIdentity.from_table_metadata(old)
    assert legacy is not None and (legacy.backend, legacy.precision) == ("torch", "fp32")
    assert legacy.model_id == "m@ffffffffffff"


def test_store_refuses_another_backend_but_not_another_precision(tmp_path: Path) -> None:
    """Real LanceDB: a table written by torch refuses onnx-int8 vectors, naming the reindex."""
    from embedpipe.chunking import chunk_documents
    from embedpipe.sources.discover import discover
    from embedpipe.sources.parse import read_documents
    from embedpipe.tasks.embedding import embed_chunks, table_schema

    settings = make_settings(tmp_path, model={"name": "fake:16"})
    write(tmp_path / "src" / "a.txt", "alpha beta gamma. " * 20)
    refs, _ = discover([str(tmp_path / "src")], settings.source, split_bytes=1 << 30)
    docs, _, _ = read_documents(refs, settings.source)
    embedder = FakeEmbedder(settings.model)
    chunks, _ = chunk_documents(docs, embedder.tokenizer, 20, 2)
    schema = table_schema(embedder, settings)
    rows, *_ = embed_chunks(chunks, embedder, 8, "run-1", schema)
    store = Store(settings.store)
    store.commit("run-1", [store.stage("run-1", 0, rows)], schema)

    store.check_compatible(embedder.identity)
    int8 = embedder.identity.model_copy(update={"backend": "onnx-int8", "precision": "int8"})
    with pytest.raises(ModelMismatchError, match=r"embedded with model\.backend=torch") as info:
        store.check_compatible(int8)
    assert "embedpipe reindex --backend onnx-int8" in str(info.value)
    assert "Run with --backend torch" in str(info.value)
    # fp32 and bf16 torch vectors may mix: precision is recorded, not enforced
    store.check_compatible(embedder.identity.model_copy(update={"precision": "bf16"}))


# --------------------------------------------------------------------------- export cache


KEY = ExportKey("sentence-transformers/all-MiniLM-L6-v2", "ab" * 32, "onnx-int8")


def write_export(folder: Path, key: ExportKey, payload: bytes = b"not really onnx", **manifest: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(payload)
    data = key.manifest() | {"sha256": hashlib.sha256(payload).hexdigest(), "created": 0.0} | manifest
    (folder / "manifest.json").write_text(json.dumps(data), encoding="utf-8")
    return folder


def test_export_folder_layout() -> None:
    root = Path("/exports")
    assert KEY.folder(root) == root / f"sentence-transformers_all-MiniLM-L6-v2-{'ab' * 8}" / "onnx-int8-r1"
    assert EXPORT_RECIPE == 1
    assert ExportKey("../../etc/passwd", "cd" * 32, "onnx").folder(root).parent.parent == root
    m = KEY.manifest()
    assert m["weights_hash"] == "ab" * 32 and m["recipe"] == EXPORT_RECIPE and m["kind"] == "onnx-int8"
    assert m["torch"] == torch.__version__ and m["transformers"]


def test_cached_export_problem(tmp_path: Path) -> None:
    folder = tmp_path / "exp"
    assert cached_export_problem(folder, KEY) == "no export yet"
    write_export(folder, KEY)
    assert cached_export_problem(folder, KEY) is None
    (folder / "manifest.json").unlink()
    assert cached_export_problem(folder, KEY) == "no export yet"
    write_export(folder, KEY)
    (folder / "model.onnx").unlink()
    assert cached_export_problem(folder, KEY) == "no export yet"

    write_export(folder, KEY)
    (folder / "manifest.json").write_text("{not json", encoding="utf-8")
    assert cached_export_problem(folder, KEY) == "manifest unreadable (JSONDecodeError)"
    (folder / "manifest.json").write_text("[1, 2]", encoding="utf-8")
    assert cached_export_problem(folder, KEY) == "manifest malformed"

    for field, value in (
        ("recipe", EXPORT_RECIPE - 1),
        ("weights_hash", "cd" * 32),
        ("kind", "onnx"),
        ("name", "other/model"),
    ):
        write_export(folder, KEY, **{field: value})
        problem = cached_export_problem(folder, KEY)
        assert problem is not None and problem.startswith(f"stale: {field} was {value!r}"), problem
    # Library versions are recorded for diagnosis only: another torch or transformers does not make
    # a loadable, verified export stale (environments sharing a cache would rebuild each other's).
    for field, value in (("torch", "1.0.0"), ("transformers", "3.0.0")):
        write_export(folder, KEY, **{field: value})
        assert cached_export_problem(folder, KEY) is None

    write_export(folder, KEY)
    (folder / "model.onnx").write_bytes(b"not really")  # truncated
    assert "does not match its recorded digest" in str(cached_export_problem(folder, KEY))
    write_export(folder, KEY, sha256="0" * 64)
    assert "does not match its recorded digest" in str(cached_export_problem(folder, KEY))
    write_export(folder, KEY)
    assert cached_export_problem(folder, KEY) is None


class FakeExporter:
    """Stands in for export_onnx (torch.onnx) so the cache's decisions can be checked quickly."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls = 0
        self.fail = fail

    def __call__(self, st_model: Any, folder: Path, key: ExportKey, model_dir: Path) -> None:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        write_export(folder, key, payload=f"export #{self.calls}".encode())


def test_ensure_export_exports_once_then_reuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="embedpipe.embedding.exports")
    exporter = FakeExporter()
    monkeypatch.setattr(exports, "export_onnx", exporter)
    checked: list[Path] = []
    folder = ensure_export(None, tmp_path, KEY, tmp_path / "root", checked.append)
    assert folder == KEY.folder(tmp_path / "root") and exporter.calls == 1 and checked == [folder]
    assert "rebuilding" not in caplog.text  # a first export is not a rebuild
    again = ensure_export(None, tmp_path, KEY, tmp_path / "root", checked.append)
    assert again == folder and exporter.calls == 1 and checked == [folder, folder]
    assert "using cached onnx-int8 export" in caplog.text


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda f: (f / "model.onnx").write_bytes(b"exp"), "does not match its recorded digest"),
        (lambda f: (f / "manifest.json").write_text("garbage", "utf-8"), "manifest unreadable"),
        (
            lambda f: write_export(f, KEY, payload=b"export #1", recipe=EXPORT_RECIPE - 1),
            "stale: recipe was 0",
        ),
    ],
    ids=["truncated", "garbage-manifest", "stale-recipe"],
)
def test_ensure_export_rebuilds_a_broken_cache(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    damage: Callable[[Path], Any],
    reason: str,
) -> None:
    exporter = FakeExporter()
    monkeypatch.setattr(exports, "export_onnx", exporter)
    folder = ensure_export(None, tmp_path, KEY, tmp_path / "root", lambda f: None)
    damage(folder)
    assert cached_export_problem(folder, KEY) is not None
    caplog.set_level(logging.WARNING, logger="embedpipe.embedding.exports")
    ensure_export(None, tmp_path, KEY, tmp_path / "root", lambda f: None)
    assert exporter.calls == 2
    assert cached_export_problem(folder, KEY) is None
    assert (folder / "model.onnx").read_bytes() == b"export #2"
    assert f"rebuilding the onnx-int8 export in {folder}" in caplog.text and reason in caplog.text


def test_ensure_export_rebuilds_an_export_the_runtime_rejects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = FakeExporter()
    monkeypatch.setattr(exports, "export_onnx", exporter)
    ensure_export(None, tmp_path, KEY, tmp_path / "root", lambda f: None)
    loads: list[bytes] = []

    def check(folder: Path) -> None:
        loads.append((folder / "model.onnx").read_bytes())
        if loads[-1] == b"export #1":
            raise RuntimeError("onnxruntime: protobuf parsing failed")

    caplog.set_level(logging.WARNING, logger="embedpipe.embedding.exports")
    ensure_export(None, tmp_path, KEY, tmp_path / "root", check)
    assert loads == [b"export #1", b"export #2"] and exporter.calls == 2
    assert "cached export failed to load (RuntimeError: onnxruntime: protobuf" in caplog.text


def test_ensure_export_failures_are_model_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exports, "export_onnx", FakeExporter(fail=RuntimeError("unsupported op")))
    with pytest.raises(
        ModelError, match=r"cannot export model=.*RuntimeError: unsupported op.*backend=torch"
    ):
        ensure_export(None, tmp_path, KEY, tmp_path / "root", lambda f: None)
    assert not KEY.folder(tmp_path / "root").exists()
    # a fresh export that does not verify is not retried in a loop: the error reaches the caller
    exporter = FakeExporter()
    monkeypatch.setattr(exports, "export_onnx", exporter)

    def reject(folder: Path) -> None:
        raise ModelError("the onnx-int8 export does not reproduce the model")

    with pytest.raises(ModelError, match="does not reproduce"):
        ensure_export(None, tmp_path, KEY, tmp_path / "root", reject)
    assert exporter.calls == 1


class FixedModel:
    def __init__(self, vecs: np.ndarray) -> None:
        self.vecs = vecs

    def encode(self, texts: list[str], **kwargs: Any) -> np.ndarray:
        assert len(texts) == len(self.vecs) and kwargs["normalize_embeddings"] is True
        return self.vecs


def test_verify_export_floor_per_backend() -> None:
    rng = np.random.default_rng(3)
    n = len(exports.VERIFY_TEXTS)
    ref = rng.standard_normal((n, 16)).astype(np.float32)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    model = FixedModel(ref)
    # the runner's vectors are pooled, not normalised: scale must not matter
    assert verify_export(lambda t: ref * 7.0, model, "onnx") == pytest.approx(1.0, abs=1e-6)
    noisy = ref + 0.03 * rng.standard_normal(ref.shape).astype(np.float32)
    cos = verify_export(lambda t: noisy, model, "onnx-int8")
    assert 0.97 <= cos < 0.9999
    with pytest.raises(ModelError, match="the onnx export does not reproduce the model"):
        verify_export(lambda t: noisy, model, "onnx")
    bad = ref.copy()
    bad[2] = np.nan
    with pytest.raises(ModelError, match="openvino export"):
        verify_export(lambda t: bad, model, "openvino")


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("model.backend=onnx on device=cuda needs onnxruntime-gpu"),
        ModelError("the onnx-int8 export does not reproduce the model"),
    ],
)
def test_ensure_export_does_not_rebuild_for_a_device_or_verification_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """Exporting again by the same recipe cannot fix these: the error goes to the user at once."""
    exporter = FakeExporter()
    monkeypatch.setattr(exports, "export_onnx", exporter)
    ensure_export(None, tmp_path, KEY, tmp_path / "root", lambda f: None)

    def check(folder: Path) -> None:
        raise error

    with pytest.raises(type(error)) as info:
        ensure_export(None, tmp_path, KEY, tmp_path / "root", check)
    assert info.value is error
    assert exporter.calls == 1  # the cached export was kept, not rebuilt


def test_ensure_export_turns_a_fresh_export_that_does_not_load_into_a_model_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exports, "export_onnx", FakeExporter())

    def check(folder: Path) -> None:
        raise RuntimeError("onnxruntime: invalid graph")

    with pytest.raises(ModelError, match=r"does not load.*invalid graph"):
        ensure_export(None, tmp_path, KEY, tmp_path / "root", check)


def test_ensure_export_names_an_unwritable_export_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"model.export_dir=.*not writable"):
        ensure_export(None, tmp_path, KEY, blocker / "exports", lambda f: None)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"backend": "onnx", "precision": "fp16"}, "precision=fp16 is not available with model.backend=onnx"),
        (
            {"backend": "onnx-int8", "precision": "bf16"},
            "precision=bf16 is not available with model.backend=onnx-int8",
        ),
        ({"precision": "fp16", "device": "cpu"}, "precision=fp16 needs a GPU"),
        ({"backend": "onnx-int8", "device": "cuda"}, "backend=onnx-int8 runs on the CPU"),
        ({"backend": "openvino", "device": "cuda:1"}, "backend=openvino runs on the CPU"),
        (
            {"backend": "onnx", "devices": ["cuda:0", "cuda:1"]},
            "model.devices applies to model.backend=torch",
        ),
    ],
)
def test_impossible_backend_combinations_are_setting_errors(model: dict[str, Any], message: str) -> None:
    """Refused when the settings load, naming the group and without pydantic's prefix."""
    with pytest.raises(ConfigError) as info:
        get_settings({"model": model})
    text = str(info.value)
    assert message in text
    assert text.startswith("invalid setting model: ") and "Value error" not in text


def test_possible_backend_combinations_load() -> None:
    for model in (
        {"backend": "onnx", "precision": "fp32", "device": "cuda"},
        {"backend": "openvino", "precision": "bf16"},
        {"backend": "torch", "precision": "fp16", "device": "cuda"},
        {"backend": "torch", "devices": ["cuda:0", "cuda:1"]},
    ):
        assert get_settings({"model": model}).model.backend == model["backend"]
