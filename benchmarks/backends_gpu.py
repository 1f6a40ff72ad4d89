"""The backend table of ``backends.py`` on a CUDA machine: run as is, it measures nothing without one.

Same measurement as ``benchmarks/backends.py`` (it reuses its :func:`~backends.run`), on the GPU
and a larger corpus:

- baselines: plain ``SentenceTransformer.encode`` in fp32 on ``cuda``, batch 32
  (sentence-transformers' default) and batch 128; ratios are given against both;
- pipelines (whole ``sync`` flow, default settings otherwise): ``torch`` with precision ``auto``
  (fp16 on CUDA), ``torch`` fp32, ``onnx`` when ``onnxruntime`` has the CUDAExecutionProvider
  (onnxruntime-gpu), and, with more than one GPU, ``torch`` on all of them (``model.devices``).

Without CUDA it prints "no CUDA device: nothing measured" and exits 0.

    python benchmarks/backends_gpu.py [--copies 100] [--repeats 3] [--device cuda] [--export-dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backends import Baseline, Variant, run  # also sets HF_HUB_OFFLINE etc.


def ort_has_cuda() -> tuple[bool, str]:
    """Whether onnxruntime can run on CUDA here, and what it offers."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False, "onnxruntime is not installed"
    providers = ort.get_available_providers()
    return "CUDAExecutionProvider" in providers, ", ".join(providers)


def gpu_variants(n_gpus: int, ort_cuda: bool) -> list[Variant]:
    """The pipeline configurations measured on a machine with ``n_gpus`` CUDA devices."""
    variants = [
        Variant("torch auto", {"backend": "torch", "precision": "auto"}),
        Variant("torch fp32", {"backend": "torch", "precision": "fp32"}),
    ]
    if ort_cuda:
        variants.append(Variant("onnx", {"backend": "onnx", "precision": "auto"}))
    if n_gpus > 1:
        devices = [f"cuda:{i}" for i in range(n_gpus)]
        variants.append(
            Variant(
                f"torch auto x{n_gpus} GPUs", {"backend": "torch", "precision": "auto", "devices": devices}
            )
        )
    return variants


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--copies", type=int, default=100, help="copies of the sample corpus (100: ~12,700 chunks)"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda", help="cuda or cuda:N (baseline and single-GPU runs)")
    ap.add_argument("--export-dir", default=None, help="ONNX export cache (default: fresh, temporary)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    if not args.device.startswith("cuda"):
        ap.error("--device must be cuda or cuda:N; use benchmarks/backends.py for the CPU")

    import torch

    if not torch.cuda.is_available():
        print(
            f"no CUDA device: nothing measured (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda or 'none'}); run this on a machine with an NVIDIA GPU, or "
            "benchmarks/backends.py for the CPU"
        )
        return 0

    n_gpus = torch.cuda.device_count()
    for i in range(n_gpus):
        props = torch.cuda.get_device_properties(i)
        print(
            f"GPU cuda:{i}: {props.name}, {props.total_memory / 2**30:.1f} GiB, "
            f"compute capability {props.major}.{props.minor}"
        )
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    ort_cuda, providers = ort_has_cuda()
    if not ort_cuda:
        print(f"onnx on CUDA: not measured (onnxruntime providers: {providers}; needs onnxruntime-gpu)")
    if n_gpus == 1:
        print("multi-GPU: not measured (one CUDA device)")
    return run(
        gpu_variants(n_gpus, ort_cuda),
        [Baseline("plain torch encode (batch 32)", 32), Baseline("plain torch encode (batch 128)", 128)],
        device=args.device,
        copies=args.copies,
        repeats=args.repeats,
        export_dir=args.export_dir,
        targets=None,
        keep=args.keep,
    )


if __name__ == "__main__":
    sys.exit(main())
