"""Choosing the torch device from a config string (`auto`, `cpu`, `cuda`, `cuda:1`, ...) and the precision
that `train.amp: auto` means on it."""

from __future__ import annotations

import torch

from ..errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when available, else the CPU; an unavailable device is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}'; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device '{name}' requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device '{name}' is not supported; expected auto, cpu, cuda or cuda:N")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bf16 matrix products in hardware (on other CPUs bf16 is emulated, slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_amp(amp: str, device: torch.device) -> str:
    """The precision `train.amp` means on `device`: `auto` becomes bf16, fp16 (older GPUs) or none."""
    if amp != "auto":
        return amp
    if native_bf16(device):
        return "bf16"
    return "fp16" if device.type == "cuda" else "none"
