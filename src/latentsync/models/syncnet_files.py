"""Which SyncNet a `--syncnet` value names, and loading it: SyncNet v2 (LSE) or a StableSyncNet of any preset.

Shared by the data pipeline's sync filter and `latentsync eval`. `--syncnet` may name a SyncNet v2 file
(`syncnet_v2.model`, told apart by its keys), a StableSyncNet checkpoint (its config: a `syncnet.yaml` beside it,
else the packaged preset its weights fit), or a model folder or name (`demo`, 1.5, 1.6) whose model.yaml names one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from latentsync.errors import CheckpointError, ConfigError
from latentsync.models.checkpoint import check_fits, read_checkpoint
from latentsync.models.modeldir import DEMO_MODEL, OFFICIAL_MODELS, SPEC_FILE, ModelSpec, official_model_dir
from latentsync.models.syncnet import StableSyncNet, load_syncnet, load_syncnet_yaml, syncnet_presets
from latentsync.models.syncnet_v2 import WRAPPER_PREFIX, SyncNetV2, load_syncnet_v2
from latentsync.paths import DEMO_MODEL_DIR

BESIDE = "syncnet.yaml"  # a StableSyncNet config next to its weights file
_V2_BRANCHES = ("netcnnaud.", "netcnnlip.")  # SyncNet v2's module names; no StableSyncNet key starts so


@dataclass
class SyncNetwork:
    """A loaded SyncNet: v2 (`config` None) or a StableSyncNet with the config it was built from."""

    net: SyncNetV2 | StableSyncNet
    config: dict[str, Any] | None
    source: str  # the config or weights file, for messages

    @property
    def is_v2(self) -> bool:
        return self.config is None


def load_sync_network(weights: Path, device: str | torch.device = "cpu") -> SyncNetwork:
    """Load what `--syncnet` names; a one-line LatentSyncError for anything that cannot be used."""
    path, config = syncnet_files(weights)
    state = read_checkpoint(path).state_dict  # read again by the loader: a cost paid once per process
    data = None if is_syncnet_v2(state) else stable_syncnet_config(path, state, config)
    del state  # before the loader reads its own copy
    if data is None:
        return SyncNetwork(load_syncnet_v2(path, device), None, str(path))
    return SyncNetwork(load_syncnet(data, path, device), data, str(config or path))


def syncnet_files(weights: Path) -> tuple[Path, Path | None]:
    """(weights file, its config or None) for what `--syncnet` names.

    A file is taken as it is, with a `syncnet.yaml` beside it as its config when there is one. A folder, `demo` or
    an official model name (1.5, 1.6) is a model folder whose model.yaml names the SyncNet and its config; only
    those two files need to be there, not the rest of the model.
    """
    if weights.is_file():
        beside = weights.parent / BESIDE
        return weights, beside if beside.is_file() else None
    text = str(weights)
    root = DEMO_MODEL_DIR if text == DEMO_MODEL else official_model_dir(text) if text in OFFICIAL_MODELS else weights
    if not (root / SPEC_FILE).is_file():
        if root != weights:
            raise ConfigError(f"--syncnet {text}: model not installed ({root / SPEC_FILE} is missing)")
        names = ", ".join([DEMO_MODEL, *OFFICIAL_MODELS])
        raise ConfigError(
            f"--syncnet: weights file not found: {weights} (give a SyncNet file, a model folder or a model name: "
            f"{names})"
        )
    spec = ModelSpec.read(root)
    if spec.syncnet_weights is None or spec.syncnet_config is None:
        raise ConfigError(f"--syncnet {weights}: {root / SPEC_FILE} names no SyncNet")
    for path in (spec.syncnet_weights, spec.syncnet_config):
        if not path.is_file():
            raise ConfigError(f"--syncnet {weights}: {path} is missing")
    return spec.syncnet_weights, spec.syncnet_config


def is_syncnet_v2(state: Mapping[str, Any]) -> bool:
    """Whether a state dict is SyncNet v2's (possibly saved inside syncnet_python's wrapper, keys `__S__.`)."""
    return any(k.removeprefix(WRAPPER_PREFIX).startswith(_V2_BRANCHES) for k in state)


def stable_syncnet_config(weights: Path, state: Mapping[str, torch.Tensor], config: Path | None) -> dict[str, Any]:
    """The config a StableSyncNet checkpoint was trained with: `config` when given (the weights must fit it),
    else the first packaged preset its weights fit strictly. A checkpoint carries no config of its own, and a
    preset that fits key for key and shape for shape builds the network it was trained as."""
    if config is not None:
        data = load_syncnet_yaml(config)
        check_fits(_expected_state(data), state, f"SyncNet weights {weights} do not fit {config}")
        return data
    presets = syncnet_presets()
    for name in presets:
        data = load_syncnet_yaml(name)
        try:
            check_fits(_expected_state(data), state, name)
        except CheckpointError:
            continue
        return data
    raise CheckpointError(
        f"SyncNet weights {weights} are neither SyncNet v2 nor fit any packaged StableSyncNet preset "
        f"(tried {', '.join(presets)}); put its config beside it as {BESIDE}"
    )


def _expected_state(data: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict layout of the StableSyncNet a config builds, made on the meta device (no memory)."""
    with torch.device("meta"):
        return StableSyncNet(data["model"]).state_dict()


def stable_syncnet_resolution(network: SyncNetwork, window: int = 16) -> int:
    """The face size a StableSyncNet scores, checking that it scores `window`-frame pixel windows of the mouth
    (sync scoring and the sync filter feed it pixels, not latents)."""
    settings = (network.config or {}).get("data") or {}
    if settings.get("latent_space") or not settings.get("lower_half", True) or settings.get("num_frames") != window:
        raise ConfigError(
            f"--syncnet: {network.source} is a SyncNet on {settings.get('num_frames')}-frame "
            f"{'latent' if settings.get('latent_space') else 'pixel'} windows; sync scoring uses {window}-frame "
            "pixel windows of the mouth (e.g. presets small, syncnet_16_pixel, syncnet_16_pixel_attn)"
        )
    if not isinstance(settings.get("resolution"), int):
        raise ConfigError(f"--syncnet: {network.source} has no data.resolution (the face size it was trained on)")
    return settings["resolution"]
