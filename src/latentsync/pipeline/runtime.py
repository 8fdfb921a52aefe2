"""Choosing the device and dtype a run uses, with clear errors when the machine cannot do what was asked."""

from __future__ import annotations

import torch

from latentsync.errors import DeviceError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` takes CUDA when present; asking for `cuda` on a machine without one is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for, but no CUDA device is available (use --device cpu)")
    if name != "cpu" and not name.startswith("cuda"):
        raise DeviceError(f"unknown device {name!r}: use auto, cpu or cuda")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` follows upstream: fp16 on GPUs of compute capability 8 or newer, fp32 everywhere else."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] > 7:
            return torch.float16
        return torch.float32
    if name not in DTYPES:
        raise DeviceError(f"unknown dtype {name!r}: use auto, {', '.join(DTYPES)}")
    if device.type == "cpu" and name == "fp16":
        raise DeviceError("--dtype fp16 is not supported on the CPU (use fp32 or bf16)")
    return DTYPES[name]
