"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"), VGG variant.

Stage-2 training adds 0.1 x LPIPS between the decoded one-step prediction and the target (lower half of the face).
The published metric is: shift/scale the [-1, 1] input, run VGG16's convolutional trunk, take the activations
after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3, unit-normalise each position's channel vector, square the
difference of the two images' features, weight the channels with a learned non-negative 1x1 head, average over
space and sum over the five layers.

The trunk is built here with torchvision's `vgg16().features` indices, so the ImageNet weight file torchvision
distributes (`vgg16-397923af.pth`) loads key for key; torchvision itself is not a dependency (see README). The
five linear heads are the ones the `lpips` package ships (`weights/v0.1/vgg.pth`), read from its install folder
without importing it, since importing it needs torchvision.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from latentsync.errors import CheckpointError
from latentsync.models.checkpoint import check_fits

# torchvision's vgg16 "D" configuration: channels per conv, "M" = 2x2 max-pool.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
# Indices in `features` after which LPIPS taps the activations: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
TAP_INDICES = (3, 8, 15, 22, 29)
TAP_CHANNELS = (64, 128, 256, 512, 512)
# The published input normalisation (ImageNet statistics re-expressed for [-1, 1] inputs).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10
HEADS_RELATIVE_PATH = Path("weights") / "v0.1" / "vgg.pth"


def vgg16_features() -> nn.Sequential:
    """VGG16's conv trunk with torchvision's module indices (conv at 0, 2, 5, 7, 10, ..., 28), randomly initialised.

    The final max-pool (index 30) is kept so the indices, and therefore the state-dict keys, match torchvision's.
    """
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), nn.ReLU()]
            channels = int(item)
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """Perceptual distance between two image batches in [-1, 1]; one value per pair, shape [N].

    Frozen and in eval mode once loaded: it is a loss, gradients flow only to its inputs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = vgg16_features()
        self.lins = nn.ModuleList([nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in TAP_CHANNELS])
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)

    def taps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The five tapped activations of normalised input; the trunk stops at the last tap (no final pool)."""
        x = (images - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features[: TAP_INDICES[-1] + 1]):
            x = layer(x)
            if i in TAP_INDICES:
                out.append(x)
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a, b: [N, 3, H, W] in [-1, 1] -> [N].

        The two batches go through the trunk separately: the weights are frozen, so an input that needs no gradient
        (the target) then records no graph, which halves the activation memory a joint batch would keep.
        """
        if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 3:
            raise ValueError(f"LPIPS needs two [N, 3, H, W] batches of one shape, got {list(a.shape)}, {list(b.shape)}")
        dtype = self.lins[0].weight.dtype
        total = a.new_zeros(a.shape[0], dtype=torch.float32)
        for fa, fb, lin in zip(self.taps(a.to(dtype)), self.taps(b.to(dtype)), self.lins):
            total = total + lin((_unit_channels(fa) - _unit_channels(fb)) ** 2).mean(dim=(1, 2, 3)).float()
        return total


def _unit_channels(x: torch.Tensor) -> torch.Tensor:
    """Divide each spatial position's channel vector by its L2 norm (plus the published epsilon)."""
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + NORM_EPS)


def lpips_heads_path() -> Path:
    """Where the installed `lpips` package keeps its VGG heads; found without importing the package."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("LPIPS heads not found: install the `lpips` package (pip install --no-deps lpips)")
    return Path(list(spec.submodule_search_locations)[0]) / HEADS_RELATIVE_PATH


def load_lpips(
    vgg_weights_path: str | os.PathLike,
    heads_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LPIPS:
    """LPIPS with VGG16 weights from a torchvision `vgg16` state dict (e.g. `vgg16-397923af.pth`; `classifier.*`
    keys are ignored) and the linear heads from `heads_path` (default: the `lpips` package's `vgg.pth`).

    Both load strict: a partly loaded perceptual loss would silently train towards the wrong target.
    """
    model = LPIPS()
    vgg = _read_state(vgg_weights_path, "VGG16")
    features = {k[len("features.") :]: v for k, v in vgg.items() if k.startswith("features.")}
    _load_strict(model.features, features, vgg_weights_path, "a torchvision vgg16 state dict (features.N.weight/bias)")
    heads_path = lpips_heads_path() if heads_path is None else Path(heads_path)
    heads = {_head_key(k): v for k, v in _read_state(heads_path, "LPIPS heads").items()}
    _load_strict(model.lins, heads, heads_path, "LPIPS VGG heads (lin0..lin4.model.1.weight)")
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _head_key(key: str) -> str:
    """`lin3.model.1.weight` (the lpips package's Dropout + Conv layout) -> `3.weight` in our `lins` list."""
    prefix, _, rest = key.partition(".model.1.")
    return f"{prefix[3:]}.{rest}" if prefix.startswith("lin") and rest else key


def _read_state(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} weights not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated / foreign files
        raise CheckpointError(f"cannot read {what} weights {path}: not a torch file ({type(exc).__name__})") from None
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{what} weights {path} are not a tensor state dict")
    return dict(state)
def _load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike, expected: str) -> None:
    check_fits(module.state_dict(), state, f"{path} is not {expected}")
    module.load_state_dict(state, strict=True)
