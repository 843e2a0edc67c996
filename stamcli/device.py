"""Where the model runs and at what precision: ``--device`` and ``--precision`` for inference and training.

:func:`resolve_device` turns ``auto``/``cpu``/``cuda``/``cuda:N`` into a :class:`torch.device`,
:func:`resolve_precision` turns ``auto``/``fp32``/``bf16``/``fp16`` into what that device can run,
and :func:`autocast_for` is the autocast context of a precision. The engine
(:mod:`stamcli.engine`) and the training loop (:mod:`stamcli.train`) both use them, so a flag
means the same in ``stam predict`` and ``stam finetune``.
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch

from .errors import StamError, UsageError

__all__ = ["PRECISIONS", "REQUIRE_DEVICE_ENV", "resolve_device", "resolve_precision", "native_bf16", "autocast_for"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: When this environment variable is set (to anything but empty or 0), ``--device auto`` is an
#: error: every run must name its device. The test suite sets it, so that a test that forgets
#: ``--device cpu`` fails on any machine, not only on one with a GPU.
REQUIRE_DEVICE_ENV = "STAM_REQUIRE_DEVICE"


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU; ``cuda`` without one is an
    error, and so is ``auto`` when :data:`REQUIRE_DEVICE_ENV` is set."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if os.environ.get(REQUIRE_DEVICE_ENV, "0") not in ("", "0"):
            raise StamError(f"--device auto is refused because {REQUIRE_DEVICE_ENV} is set: name the device "
                            "(--device cpu, cuda or cuda:N)")
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"invalid device {spec!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise StamError(f"device {spec!r} asked for, but no CUDA GPU is available (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise StamError(f"device {spec!r} does not exist: {torch.cuda.device_count()} CUDA device(s) found")
    elif device.type != "cpu":
        raise UsageError(f"unsupported device {spec!r}; use auto, cpu, cuda or cuda:N")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether the CUDA GPU ``device`` computes in bf16 natively: compute capability 8.0 (Ampere)
    or newer, or any ROCm GPU.

    ``torch.cuda.is_bf16_supported()`` is not the question: by default it also counts GPUs that
    only emulate bf16 (V100, T4: slower than fp16 there), and it asks about the current device,
    not the one the model runs on.
    """
    if torch.version.hip:
        return True
    return torch.cuda.get_device_properties(device).major >= 8


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 on a CUDA GPU that computes it natively (else fp16), fp32 on the CPU."""
    precision = (precision or "auto").lower()
    if precision not in PRECISIONS:
        raise UsageError(f"invalid precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if native_bf16(device) else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise StamError("fp16 needs a CUDA device; on the CPU use fp32 or bf16")
    return precision


def autocast_for(device: torch.device, precision: str):
    """The autocast context for ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])
