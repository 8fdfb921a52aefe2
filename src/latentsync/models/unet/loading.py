"""Loading U-Net weights with upstream's tolerance, but never silently.

Upstream's `UNet3DConditionModel.load_state_dict` drops checkpoint tensors that belong to a differently
configured network (conv_in for another input-channel count, conv_out for another output count, audio
cross-attention k/v for another audio width) and then loads non-strict, so any mismatch in key names passes
without a word and leaves those layers at their constructor values (conv_in/conv_out at zero: a U-Net that
outputs zeros). We apply the same rules, so every checkpoint that loads upstream loads here, and return and
log a report of what was dropped, missing or unexpected.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from latentsync.errors import CheckpointError
from latentsync.models.checkpoint import CheckpointFile, read_checkpoint
from latentsync.models.unet.config import UNetConfig, load_unet_yaml
from latentsync.models.unet.unet import UNet3DConditionModel

log = logging.getLogger(__name__)

# Deterministic sinusoidal tables: a checkpoint without them loses nothing (the model builds the same values).
POSITION_TABLE_SUFFIX = "pos_encoder.pe"


@dataclass
class UNetLoadReport:
    """What a load did not match exactly. `dropped` maps each dropped checkpoint key to the reason."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    global_step: int = 0

    @property
    def clean(self) -> bool:
        """True when every model tensor came from the checkpoint and every checkpoint tensor was used."""
        return not (self.missing or self.unexpected or self.dropped)

    @property
    def missing_weights(self) -> list[str]:
        """Missing keys that matter (everything but the deterministic position tables)."""
        return [k for k in self.missing if not k.endswith(POSITION_TABLE_SUFFIX)]


def load_unet_weights(
    model: UNet3DConditionModel,
    source: str | os.PathLike | Mapping[str, torch.Tensor] | CheckpointFile,
    map_location: str | torch.device = "cpu",
) -> UNetLoadReport:
    """Load a checkpoint file (official `.pt` dict or safetensors) or a state dict into `model`.

    Drops what upstream drops, then loads non-strict. A kept tensor whose shape differs from the model's is a
    `CheckpointError` (upstream raises too). The returned report is also logged: a warning for dropped,
    unexpected and missing weights, info for missing position tables.
    """
    if isinstance(source, CheckpointFile):
        ckpt = source
    elif isinstance(source, Mapping):
        ckpt = CheckpointFile(dict(source))
    else:
        ckpt = read_checkpoint(source, map_location=map_location)
    state = dict(ckpt.state_dict)
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"U-Net state dict entry {bad[0]!r} is a {type(state[bad[0]]).__name__}, not a tensor")

    dropped = _drop_incompatible(state, model.config)
    expected = model.state_dict()
    for key, tensor in state.items():
        if key in expected and tensor.shape != expected[key].shape:
            raise CheckpointError(
                f"U-Net checkpoint tensor {key} has shape {list(tensor.shape)}, the model expects "
                f"{list(expected[key].shape)} (wrong config for these weights?)"
            )
    result = model.load_state_dict(state, strict=False)
    report = UNetLoadReport(list(result.missing_keys), list(result.unexpected_keys), dropped, ckpt.global_step)
    _log_report(report)
    return report


def load_unet(
    config: str | os.PathLike,
    weights: str | os.PathLike | Mapping[str, torch.Tensor],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[UNet3DConditionModel, dict[str, Any]]:
    """Build the U-Net of a preset name or yaml on `device`, load `weights`, cast to `dtype`, eval mode.

    Returns the model and the whole yaml (its `data:`/`run:` sections drive the pipeline). The load report is
    logged by `load_unet_weights`.
    """
    unet_yaml = load_unet_yaml(config)
    cfg = UNetConfig.from_dict(unet_yaml["model"])
    device = torch.device(device)
    with device:  # initialise on the target device: much faster on a GPU than on the CPU
        model = UNet3DConditionModel(cfg)
    load_unet_weights(model, weights, map_location=device)
    return model.to(dtype=dtype).eval(), unet_yaml


def _drop_incompatible(state: dict[str, torch.Tensor], cfg: UNetConfig) -> dict[str, str]:
    """Remove (in place) the tensors upstream's loader removes; return {key: reason}."""
    dropped: dict[str, str] = {}

    def drop(keys: Sequence[str], reason: str) -> None:
        for key in keys:
            if key in state:
                del state[key]
                dropped[key] = reason

    w = state.get("conv_in.weight")
    if w is not None and w.ndim > 1 and w.shape[1] != cfg.in_channels:
        drop(("conv_in.weight", "conv_in.bias"), f"conv_in has {w.shape[1]} input channels, config {cfg.in_channels}")
    w = state.get("conv_out.weight")
    if w is not None and w.shape[0] != cfg.out_channels:
        reason = f"conv_out has {w.shape[0]} output channels, config {cfg.out_channels}"
        drop(("conv_out.weight", "conv_out.bias"), reason)
    audio_kv = [
        k
        for k, v in state.items()
        if (".attn2.to_k." in k or ".attn2.to_v." in k) and v.ndim > 1 and v.shape[1] != cfg.cross_attention_dim
    ]
    for key in audio_kv:
        drop((key,), f"audio width {state[key].shape[1]}, config cross_attention_dim {cfg.cross_attention_dim}")
    return dropped


def _log_report(report: UNetLoadReport) -> None:
    by_reason: dict[str, list[str]] = {}
    for key, reason in report.dropped.items():
        by_reason.setdefault(reason, []).append(key)
    for reason, keys in by_reason.items():
        log.warning("U-Net checkpoint: dropped %s (%s)", _summarise(keys), reason)
    if report.unexpected:
        log.warning("U-Net checkpoint: ignored unexpected %s", _summarise(report.unexpected))
    if report.missing_weights:
        log.warning("U-Net checkpoint: missing %s (left at initial values)", _summarise(report.missing_weights))
    tables = [k for k in report.missing if k.endswith(POSITION_TABLE_SUFFIX)]
    if tables:
        log.info("U-Net checkpoint: %d motion position tables not stored; using the built-in ones", len(tables))


def _summarise(keys: Sequence[str], limit: int = 8) -> str:
    """All keys when few; otherwise counts per top-level module path (`up_blocks.1.motion_modules.* (48)`)."""
    if len(keys) <= limit:
        return f"{len(keys)} key{'s' if len(keys) != 1 else ''}: " + ", ".join(keys)
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(".".join(key.split(".")[:3]), []).append(key)
    parts = [members[0] if len(members) == 1 else f"{prefix}.* ({len(members)})" for prefix, members in groups.items()]
    more = f", ... {len(parts) - limit} more groups" if len(parts) > limit else ""
    return f"{len(keys)} keys: " + ", ".join(parts[:limit]) + more
