"""`latentsync download`: fetch the official LatentSync files with huggingface_hub into our model format.

Files land in the hub cache first (resumable, shared with other tools) and are then hard-linked (or copied)
into the model folder under their upstream names, so the folder never holds a half-downloaded file.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from latentsync.errors import LatentSyncError, ModelNotFoundError
from latentsync.models.modeldir import OFFICIAL_MODELS, ModelSpec, official_model_dir, place_file

SYNCNET_PRESET = "syncnet_16_pixel_attn"  # the config of the released stable_syncnet.pt


class DownloadError(LatentSyncError):
    """A file could not be fetched from the hub (offline, not found, refused)."""


def download_official(name: str, dest: str | Path | None = None, with_syncnet: bool = False) -> ModelSpec:
    """Download official model `name` ("1.5" or "1.6") into `dest` (default: the folder `--model NAME` reads)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from latentsync.models.syncnet import load_syncnet_yaml
    from latentsync.models.unet import load_unet_yaml

    official = OFFICIAL_MODELS.get(name)
    if official is None:
        raise ModelNotFoundError(f"unknown model {name!r}: downloadable models are {', '.join(OFFICIAL_MODELS)}")
    root = Path(dest) if dest else official_model_dir(name)
    wanted = [(official.repo, f, root / f) for f in official.files]
    wanted += [(official.vae_repo, f, root / "vae" / f) for f in official.vae_files]
    if with_syncnet:
        wanted.append((official.repo, official.syncnet_file, root / official.syncnet_file))
    for repo, filename, target in wanted:
        if target.is_file():
            continue
        try:
            cached = hf_hub_download(repo_id=repo, filename=filename)
        except LocalEntryNotFoundError:
            raise DownloadError(f"cannot download {repo}/{filename}: offline and not in the hub cache") from None
        except (HfHubHTTPError, OSError) as exc:
            raise DownloadError(f"cannot download {repo}/{filename}: {str(exc).splitlines()[0]}") from None
        place_file(Path(cached), target)

    unet_yaml = load_unet_yaml(official.unet_preset)
    spec = ModelSpec(
        root=root,
        name=f"latentsync-{name}",
        resolution=int(unet_yaml["data"]["resolution"]),
        unet_config=root / "unet.yaml",
        unet_weights=root / official.files[0],
        vae=root / "vae",
        whisper=root / official.files[1],
        inference={"steps": 20, "guidance_scale": 1.5},
    )
    spec.unet_config.write_text(yaml.safe_dump(unet_yaml, sort_keys=False))
    if with_syncnet:
        spec.syncnet_config = root / "syncnet.yaml"
        spec.syncnet_weights = root / official.syncnet_file
        spec.syncnet_config.write_text(yaml.safe_dump(load_syncnet_yaml(SYNCNET_PRESET), sort_keys=False))
    spec.write()
    return spec
