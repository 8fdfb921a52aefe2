"""hyperIQA (Su et al., CVPR 2020): the blind image-quality model behind the data pipeline's visual-quality filter.

A ResNet-50 reads the image. Its last feature map drives a hyper network that *generates* the weights of a small
per-image target network (224 -> 112 -> 56 -> 28 -> 14 -> 1, sigmoid between layers), and the target network maps
a multi-scale "local distortion aware" vector (pooled features of all four stages) to a score, 0..100 on KonIQ.
Module names follow SSL92/hyperIQA's `models.py` (`HyperNet` with its backbone as `res`; the backbone has no `fc`),
so the published `koniq_pretrained.pkl` (a bare state dict) loads strictly. The ResNet-50 is defined here because
torchvision is not a dependency; its names are torchvision's (`layer3.5.bn2`, `layer1.0.downsample.0`, ...).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from latentsync.models.checkpoint import load_legacy_strict, read_checkpoint

CROP = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_QUALITY = 40.0  # upstream's filter keeps a clip whose mean score is >= 40


@dataclass(frozen=True)
class HyperIQAConfig:
    """`HyperNet(16, 112, 224, 112, 56, 28, 14, 7)`, the configuration of every published hyperIQA checkpoint."""

    lda_out_channels: int = 16  # width of each of the three early local-distortion vectors
    hyper_in_channels: int = 112  # channels of the feature map the hyper network reads
    target_in_size: int = 224  # length of the target network's input vector
    target_fc_sizes: tuple[int, int, int, int] = (112, 56, 28, 14)
    feature_size: int = 7  # side of the last ResNet feature map for a 224 px input


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 conv), torchvision's names."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNetBackbone(nn.Module):
    """ResNet-50 without its classifier, plus hyperIQA's local distortion aware (lda) branches.

    Each lda branch squeezes a stage's output with a 1x1 conv (none after the last stage), average-pools it in
    7x7 blocks and projects the flattened result; the four projections concatenate to the target network's input.
    """

    def __init__(self, lda_out_channels: int, target_in_size: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        inplanes = 64
        for index, (planes, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), 1):
            first = Bottleneck(inplanes, planes, stride)
            rest = [Bottleneck(planes * 4, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(first, *rest))
            inplanes = planes * 4
        # (stage channels, squeezed channels, pooled side at 224 px input)
        for index, (channels, squeezed, side) in enumerate(((256, 16, 8), (512, 32, 4), (1024, 64, 2)), 1):
            squeeze = nn.Conv2d(channels, squeezed, 1, bias=False)
            setattr(self, f"lda{index}_pool", nn.Sequential(squeeze, nn.AvgPool2d(7, 7)))
            setattr(self, f"lda{index}_fc", nn.Linear(squeezed * side * side, lda_out_channels))
        self.lda4_pool = nn.AvgPool2d(7, 7)
        self.lda4_fc = nn.Linear(2048, target_in_size - 3 * lda_out_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images [B, 3, 224, 224] -> (last feature map [B, 2048, 7, 7], target input vector [B, 224])."""
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        vectors = []
        for index in range(1, 5):
            x = getattr(self, f"layer{index}")(x)
            vectors.append(getattr(self, f"lda{index}_fc")(getattr(self, f"lda{index}_pool")(x).flatten(1)))
        return x, torch.cat(vectors, 1)


@dataclass
class TargetParams:
    """What the hyper network produces per image: the target network's input and its layers' weights and biases."""

    in_vec: torch.Tensor  # [B, target_in_size]
    weights: list[torch.Tensor]  # 5 x [B, out, in]
    biases: list[torch.Tensor]  # 5 x [B, out]


class HyperIQA(nn.Module):
    """The original `HyperNet` and its `TargetNet` in one module: `forward` returns the quality score per image."""

    def __init__(self, config: HyperIQAConfig = HyperIQAConfig()) -> None:
        super().__init__()
        self.config = config
        c, fs = config.hyper_in_channels, config.feature_size
        self.res = ResNetBackbone(config.lda_out_channels, config.target_in_size)
        self.conv1 = nn.Sequential(
            nn.Conv2d(2048, 1024, 1), nn.ReLU(inplace=True),
            nn.Conv2d(1024, 512, 1), nn.ReLU(inplace=True),
            nn.Conv2d(512, c, 1), nn.ReLU(inplace=True),
        )
        sizes = (config.target_in_size, *config.target_fc_sizes)
        for i in range(4):
            # A conv over the 7x7 map generates layer i+1's weight matrix, fs*fs entries per output channel.
            setattr(self, f"fc{i + 1}w_conv", nn.Conv2d(c, sizes[i] * sizes[i + 1] // fs**2, 3, padding=1))
            setattr(self, f"fc{i + 1}b_fc", nn.Linear(c, sizes[i + 1]))
        self.fc5w_fc = nn.Linear(c, sizes[-1])
        self.fc5b_fc = nn.Linear(c, 1)

    def target_params(self, images: torch.Tensor) -> TargetParams:
        """Run the backbone and the hyper network: the per-image target network, as the original `HyperNet.forward`."""
        feat, in_vec = self.res(images)
        hyper = self.conv1(feat)
        pooled = hyper.mean((2, 3))
        sizes = (self.config.target_in_size, *self.config.target_fc_sizes)
        b = images.shape[0]
        weights = [getattr(self, f"fc{i + 1}w_conv")(hyper).reshape(b, sizes[i + 1], sizes[i]) for i in range(4)]
        weights.append(self.fc5w_fc(pooled).reshape(b, 1, sizes[-1]))
        biases = [getattr(self, f"fc{i + 1}b_fc")(pooled) for i in range(4)] + [self.fc5b_fc(pooled)]
        return TargetParams(in_vec, weights, biases)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised RGB [B, 3, 224, 224] -> quality [B] (KonIQ scale, higher is better)."""
        return target_net(self.target_params(images))


def target_net(params: TargetParams) -> torch.Tensor:
    """The original `TargetNet`: four per-image linear layers with sigmoids, then a linear output -> [B]."""
    q = params.in_vec.unsqueeze(-1)
    for i, (w, b) in enumerate(zip(params.weights, params.biases)):
        q = torch.bmm(w, q) + b.unsqueeze(-1)
        if i < 4:
            q = torch.sigmoid(q)
    return q.reshape(-1)


def load_hyperiqa(path: str | os.PathLike, device: str | torch.device = "cpu") -> HyperIQA:
    """Load `koniq_pretrained.pkl` strictly and return the model in eval mode; a mismatch is a one-line
    `CheckpointError`. As for SyncNet v2, BatchNorm `num_batches_tracked` counters may be absent."""
    with torch.device("meta"):
        model = HyperIQA()
    what = f"hyperIQA weights {path} do not fit HyperNet(16, 112, 224, 112, 56, 28, 14, 7)"
    return load_legacy_strict(model, read_checkpoint(path).state_dict, what, device)  # type: ignore[return-value]


def center_crop(image: torch.Tensor, size: int = CROP) -> torch.Tensor:
    """torchvision's `CenterCrop` on [..., H, W]: offset round((H - size) / 2) (Python rounding); a side shorter
    than `size` is first zero-padded to it, the extra pixel going after."""
    h, w = image.shape[-2:]
    if h < size or w < size:
        ph, pw = max(size - h, 0), max(size - w, 0)
        image = F.pad(image, (pw // 2, (pw + 1) // 2, ph // 2, (ph + 1) // 2))
        h, w = image.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image[..., top : top + size, left : left + size]


def quality_frame_indices(num_frames: int) -> tuple[int, int, int]:
    """The frames upstream scores: first, middle (n // 2) and last."""
    if num_frames < 1:
        raise ValueError("a clip needs at least one frame to score")
    return 0, num_frames // 2, num_frames - 1


@torch.no_grad()
def quality_score(model: HyperIQA, frames_rgb_uint8: Sequence[np.ndarray]) -> float:
    """Mean hyperIQA score of RGB uint8 frames [H, W, 3], as upstream's `filter_visual_quality` computes it.

    Each frame is scaled to [0, 1], centre-cropped to 224 at its own size (the clips are already face-aligned at
    256 or 512; no resize), ImageNet-normalised and scored once. hyperIQA's own demo instead resizes to 512x384
    and averages 10 random 224 crops; we follow upstream's pipeline because its threshold (40) was set on these
    scores, and because one centre crop is deterministic.
    """
    if not len(frames_rgb_uint8):
        raise ValueError("no frames to score")
    param = next(model.parameters())
    images = torch.stack([center_crop(torch.from_numpy(np.asarray(f)).permute(2, 0, 1)) for f in frames_rgb_uint8])
    images = images.to(param.device, torch.float32) / 255.0
    mean = torch.tensor(IMAGENET_MEAN, device=param.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=param.device).view(1, 3, 1, 1)
    return float(model(((images - mean) / std).to(param.dtype)).float().mean())


__all__: Sequence[str] = (
    "HyperIQAConfig",
    "HyperIQA",
    "TargetParams",
    "target_net",
    "load_hyperiqa",
    "center_crop",
    "quality_frame_indices",
    "quality_score",
    "MIN_QUALITY",
)
