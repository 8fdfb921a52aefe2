"""The U-Net's configuration: upstream's yaml `model:` section as a typed, validated dataclass.

Keys and meanings are upstream's (`UNet3DConditionModel.from_config(config.model)`), so a yaml written for
upstream builds the same network here. Omitted keys take the values upstream resolves for LatentSync 1.6
(`stage2_512.yaml`), which is what `resolved_model_config` in the reference manifests records; `UNetConfig()`
is therefore the released architecture. Keys upstream accepts but LatentSync never changes are kept so that
upstream configs parse, but only their upstream values are accepted: anything else is a `ConfigError` rather
than a silently different network.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from latentsync.errors import ConfigError
from latentsync.paths import CONFIG_DIR

UNET_CONFIG_DIR = CONFIG_DIR / "unet"

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock3D", "DownBlock3D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock3D", "UpBlock3D")
MID_BLOCK_TYPES = ("UNetMidBlock3DCrossAttn",)
# The motion module's GroupNorm has 32 groups whatever `norm_num_groups` says (upstream hard-codes it).
MOTION_NORM_GROUPS = 32


@dataclass(frozen=True)
class MotionModuleConfig:
    """`motion_module_kwargs`: the temporal transformer inserted after each spatial layer in stage 2."""

    num_attention_heads: int = 8
    num_transformer_block: int = 1
    attention_block_types: tuple[str, ...] = ("Temporal_Self", "Temporal_Self")
    temporal_position_encoding: bool = True
    temporal_position_encoding_max_len: int = 24
    temporal_attention_dim_div: int = 1
    zero_initialize: bool = True

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MotionModuleConfig":
        values = _coerce(cls, d, "motion_module_kwargs")
        if any(t != "Temporal_Self" for t in values.get("attention_block_types", ())):
            raise ConfigError(
                f"motion_module_kwargs.attention_block_types: only 'Temporal_Self' is supported, "
                f"got {list(values['attention_block_types'])}"
            )
        return cls(**values)


@dataclass(frozen=True)
class UNetConfig:
    """Every constructor argument of upstream's `UNet3DConditionModel`, defaults as resolved for stage2_512."""

    sample_size: int = 64
    in_channels: int = 13
    out_channels: int = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",)
    mid_block_type: str = "UNetMidBlock3DCrossAttn"
    up_block_types: tuple[str, ...] = ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3
    only_cross_attention: bool = False
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 384
    # Upstream passes this through as the number of heads (8 heads of C/8 dims), despite the name.
    attention_head_dim: int = 8
    dual_cross_attention: bool = False
    use_linear_projection: bool = False
    class_embed_type: str | None = None
    num_class_embeds: int | None = None
    upcast_attention: bool = False
    resnet_time_scale_shift: str = "default"
    use_inflated_groupnorm: bool = False
    use_motion_module: bool = True
    motion_module_resolutions: tuple[int, ...] = (1, 2, 4, 8)
    motion_module_mid_block: bool = False
    motion_module_decoder_only: bool = False
    motion_module_type: str | None = "Vanilla"
    motion_module_kwargs: MotionModuleConfig = field(default_factory=MotionModuleConfig)
    add_audio_layer: bool = True

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "UNetConfig":
        """Parse an upstream yaml `model:` dict; unknown keys and unsupported values raise `ConfigError`."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"U-Net config must be a mapping, got {type(d).__name__}")
        values = _coerce(cls, {k: v for k, v in d.items() if k != "motion_module_kwargs"}, "U-Net config")
        if "motion_module_kwargs" in d:
            mm = d["motion_module_kwargs"]
            if not isinstance(mm, Mapping):
                raise ConfigError(f"U-Net config: motion_module_kwargs must be a mapping, got {type(mm).__name__}")
            values["motion_module_kwargs"] = MotionModuleConfig.from_dict(mm)
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain yaml-safe dict (lists, not tuples) in upstream key order."""
        return _plain(dataclasses.asdict(self))

    @property
    def time_embed_dim(self) -> int:
        return self.block_out_channels[0] * 4

    def motion_module_at(self, level: int, decoder: bool) -> bool:
        """Whether resolution level `level` (0 = full size) gets motion modules, as upstream decides it.

        Upstream indexes resolutions as 2**level on both paths (the up path counts from the bottom, so it is
        the same 2**level for the block at that size) and skips the encoder when `motion_module_decoder_only`.
        """
        if not self.use_motion_module or (self.motion_module_decoder_only and not decoder):
            return False
        return 2**level in self.motion_module_resolutions

    def validate(self) -> None:
        """Reject settings this implementation does not build, naming the key."""
        fixed = {
            "only_cross_attention": False,
            "dual_cross_attention": False,
            "use_linear_projection": False,
            "class_embed_type": None,
            "num_class_embeds": None,
            "upcast_attention": False,
            "resnet_time_scale_shift": "default",
            "use_inflated_groupnorm": False,
            "act_fn": "silu",
            "downsample_padding": 1,
            "mid_block_type": MID_BLOCK_TYPES[0],
            "motion_module_mid_block": False,
        }
        for key, value in fixed.items():
            if getattr(self, key) != value:
                raise ConfigError(f"U-Net config: {key}={getattr(self, key)!r} is not supported (only {value!r})")
        n = len(self.block_out_channels)
        if not n or len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ConfigError(
                "U-Net config: block_out_channels, down_block_types and up_block_types need the same non-zero "
                f"length, got {n}, {len(self.down_block_types)}, {len(self.up_block_types)}"
            )
        for key, allowed in (("down_block_types", DOWN_BLOCK_TYPES), ("up_block_types", UP_BLOCK_TYPES)):
            bad = [t for t in getattr(self, key) if t not in allowed]
            if bad:
                raise ConfigError(f"U-Net config: unknown {key} {bad}; known: {', '.join(allowed)}")
        if self.use_motion_module and self.motion_module_type != "Vanilla":
            raise ConfigError(
                f"U-Net config: motion_module_type {self.motion_module_type!r} is not supported (only 'Vanilla')"
            )
        heads = self.attention_head_dim
        for c in self.block_out_channels:
            groups = [self.norm_num_groups] + ([MOTION_NORM_GROUPS] if self.use_motion_module else [])
            if any(c % g for g in groups) or c % heads:
                raise ConfigError(
                    f"U-Net config: block_out_channels {list(self.block_out_channels)} must be divisible by "
                    f"norm_num_groups {self.norm_num_groups}, attention_head_dim {heads}"
                    + (f" and the motion module's {MOTION_NORM_GROUPS} groups" if self.use_motion_module else "")
                )


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-05` (no dot) as a string; OmegaConf, upstream's loader, reads it as a float."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def unet_presets() -> list[str]:
    """Names of the packaged U-Net configs (upstream's five plus our `small`)."""
    return sorted(p.stem for p in UNET_CONFIG_DIR.glob("*.yaml"))


def load_unet_yaml(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """The whole yaml (`model:`, `data:`, `run:`) of a preset name (`stage2_512`, `small`, ...) or a file path."""
    path = Path(name_or_path)
    if not path.is_file():
        preset = UNET_CONFIG_DIR / f"{name_or_path}.yaml"
        if not (isinstance(name_or_path, str) and preset.is_file() and preset.parent == UNET_CONFIG_DIR):
            raise ConfigError(
                f"U-Net config {str(name_or_path)!r} not found: not a file and not a preset "
                f"(presets: {', '.join(unet_presets())})"
            )
        path = preset
    try:
        data = yaml.load(path.read_text(), Loader=_YamlLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"cannot read U-Net config {path}: {first_line}") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ConfigError(f"U-Net config {path} has no `model:` section")
    return data


def load_unet_config(name_or_path: str | os.PathLike) -> UNetConfig:
    """`UNetConfig` of a preset name or yaml path."""
    return UNetConfig.from_dict(load_unet_yaml(name_or_path)["model"])


# Keys whose upstream value may be null.
_NULLABLE = frozenset({"sample_size", "class_embed_type", "num_class_embeds", "motion_module_type"})


def _coerce(cls: type, d: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check keys against the dataclass fields and convert values to the field types (yaml lists to tuples)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = [str(k) for k in d if k not in names]
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    defaults = cls()
    out: dict[str, Any] = {}
    for key, value in d.items():
        try:
            out[key] = _like(getattr(defaults, key), value, key in _NULLABLE)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: bad value for {key}: {exc}") from None
    return out


def _like(default: Any, value: Any, nullable: bool) -> Any:
    """`value` converted to the type of `default`; raises TypeError when it cannot be without guessing."""
    if value is None:
        if nullable:
            return None
        raise TypeError("must not be null")
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {value!r}")
        return tuple(_like(default[0], v, False) for v in value) if default else tuple(value)
    if isinstance(default, bool) or isinstance(value, bool):
        if not (isinstance(default, bool) and isinstance(value, bool)):
            raise TypeError(f"expected {type(default).__name__}, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise TypeError(f"expected an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if not isinstance(value, (int, float)):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
