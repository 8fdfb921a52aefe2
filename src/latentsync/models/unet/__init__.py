"""LatentSync's audio-conditioned video U-Net: config, model and checkpoint loading.

Parameter names follow upstream exactly, so the official `latentsync_unet.pt` files load unchanged.
"""

from latentsync.models.unet.config import (
    MotionModuleConfig,
    UNetConfig,
    load_unet_config,
    load_unet_yaml,
    unet_presets,
)
from latentsync.models.unet.loading import UNetLoadReport, load_unet, load_unet_weights
from latentsync.models.unet.unet import FeatureCache, UNet3DConditionModel

__all__ = [
    "FeatureCache",
    "MotionModuleConfig",
    "UNet3DConditionModel",
    "UNetConfig",
    "UNetLoadReport",
    "load_unet",
    "load_unet_config",
    "load_unet_weights",
    "load_unet_yaml",
    "unet_presets",
]
