"""Where the model runs: devices for torch and the graph runtimes, and the precision on each.

``cpu``, and ``auto`` with a CPU-only torch build, are answered without importing torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

from embedpipe.config import ModelSettings
from embedpipe.embedding.runners import have_module
from embedpipe.errors import ConfigError


def _torch_build_has_accelerator() -> bool:
    """Whether the installed torch could see a GPU, read from its version file without importing it.

    A CPU-only build (``torch.version.cuda`` and ``.hip`` both ``None``) off macOS never has CUDA or
    MPS; anything else (a GPU build, macOS, an unreadable file) answers True: ask torch itself.
    """
    if sys.platform == "darwin":
        return True
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return True  # importing torch then reports the real problem
    try:
        text = (Path(next(iter(spec.submodule_search_locations))) / "version.py").read_text()
    except OSError:
        return True
    for name in ("cuda", "hip"):
        m = re.search(rf"^{name}\s*(?::[^=\n]*)?=\s*(\S+)", text, re.MULTILINE)
        if m is None or m.group(1) != "None":
            return True
    return False


def choose_device(requested: str) -> str:
    """Pick ``cuda``, ``mps`` or ``cpu`` for ``auto``; check that an explicit device exists.

    ``cpu``, and ``auto`` with a CPU-only torch build, are answered without importing torch.
    """
    if requested == "cpu" or (requested == "auto" and not _torch_build_has_accelerator()):
        return "cpu"
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"model.device={requested} but CUDA is not available here; use auto or cpu")
    if requested == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ConfigError("model.device=mps but MPS is not available here; use auto or cpu")
    return requested


def resolve_devices(settings: ModelSettings) -> list[str]:
    """The devices a torch model runs on: ``model.devices``, else every GPU for ``auto``, else one."""
    if settings.devices:
        import torch

        for d in settings.devices:
            choose_device(d)
            if d.startswith("cuda:") and int(d[5:]) >= torch.cuda.device_count():
                raise ConfigError(
                    f"model.devices names {d} but this machine has {torch.cuda.device_count()} CUDA device(s)"
                )
        return list(settings.devices)
    device = choose_device(settings.device)
    if settings.device == "auto" and device == "cuda":
        import torch

        if torch.cuda.device_count() > 1:
            return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [device]


def graph_device(settings: ModelSettings) -> str:
    """The device of an ONNX/OpenVINO backend: ``auto`` is the CPU, except plain onnx with a GPU runtime."""
    if settings.device != "auto":
        return choose_device(settings.device)
    if settings.backend == "onnx" and have_module("onnxruntime"):
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers() and choose_device("auto") == "cuda":
            return "cuda"
    return "cpu"


def check_graph_device(settings: ModelSettings, device: str) -> None:
    """Refuse a device the ONNX/OpenVINO backend cannot use, before any export is made."""
    if settings.backend == "onnx" and device.startswith("cuda"):
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError(
                f"model.backend=onnx on device={device} needs onnxruntime-gpu (installed: "
                f"{', '.join(ort.get_available_providers())}); install it, or use model.backend=torch on GPUs"
            )


def resolve_precision(settings: ModelSettings, device: str) -> str:
    """``model.precision`` with ``auto`` made concrete for the backend and device.

    Raises:
        ConfigError: A precision the backend or device cannot run.
    """
    p = settings.precision
    backend = settings.backend
    if backend in {"onnx", "onnx-int8"}:  # other precisions are refused by ModelSettings
        return "int8" if backend == "onnx-int8" else "fp32"
    if backend == "openvino":
        return p  # resolved by OpenVINO for auto (bf16 where the CPU has AMX)
    if p == "auto":
        return "fp16" if device.startswith("cuda") else "fp32"
    if p == "fp16" and device == "cpu":  # device auto found no GPU
        raise ConfigError(
            "model.precision=fp16 needs a GPU; on a CPU use bf16 (fast where it has AMX) or fp32"
        )
    if p == "bf16" and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_bf16_supported():
            raise ConfigError("model.precision=bf16 is not supported by this GPU; use fp16 or fp32")
    return p


def cpu_fingerprint() -> str:
    """The CPU model, its feature flags and the cores this process may use (a short hash)."""
    import platform

    text = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("model name", "flags", "Features")):
                    text += line
                if not line.strip() and text:
                    break
    except OSError:
        text = platform.processor() or platform.machine()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return hashlib.sha256(f"{text}|{cores}".encode()).hexdigest()[:16]


def openvino_precision(root: Path) -> str:
    """The precision OpenVINO compiles an ``auto`` model in on this CPU (``bf16`` or ``fp32``, ...).

    Asked of OpenVINO once per CPU and OpenVINO version and remembered in ``root`` (the export
    folder), so that a run which embeds nothing knows its identity without importing OpenVINO.
    The runner reports the precision it really compiled in; the embedder corrects to that.
    """
    import importlib.metadata as md

    key = f"{cpu_fingerprint()}|{md.version('openvino')}"
    path = root / "openvino-precision.json"
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(known, dict) and isinstance(known.get(key), str):
            return str(known[key])
    except (OSError, ValueError):
        known = {}
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    import openvino as ov

    hinted = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    name = hinted.get_type_name() if hasattr(hinted, "get_type_name") else str(hinted)
    precision = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(name, name)
    from embedpipe.embedding.exports import write_atomic

    try:
        root.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({**(known if isinstance(known, dict) else {}), key: precision}))
    except OSError:
        pass  # asked again next time
    return precision
