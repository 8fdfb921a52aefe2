"""Step 6, `sync`: keep clips whose speech matches the lips, and fix a constant audio offset.

A SyncNet evaluator measures each aligned clip and returns `{"conf", "offset", "min_conf", ...}`:

- `offset`, in frames, positive when the audio runs ahead of the lips (speech heard before the mouth moves).
  Both networks report it this way (`eval.lse` and `eval.sync.stable_syncnet_offset` pair lip window i with
  audio window i - offset and share `eval.lse.summarise_offsets`): a clip whose audio was delayed by 0.2 s
  measures -5.
- `conf`, how far the best offset stands out: the median minus the minimum of the distance curve over offsets
  -15..+15. Its scale depends on the network, so the evaluator also reports the threshold it is judged by,
  `min_conf`: 3 for SyncNet v2 (LSE-C, upstream's rule) and `MIN_STABLE_CONFIDENCE` for a StableSyncNet (1 -
  cosine distances, 0..2; calibrated on held-out synthetic clips with the demo model's SyncNet, see
  docs/data-pipeline.md).

A clip is kept when conf >= min_conf and |offset| <= 6, as upstream. Upstream fixes a non-zero offset by delaying
the audio by offset / 25 s; we trim instead: the first `offset` frames (audio ahead) or the last `-offset` frames
(audio behind) are cut, with the matching audio, so the clip has no inserted silence and is at most 6 frames
shorter. A clip with offset 0 is passed on as it is.

`--syncnet` names (see `models.syncnet_files`) a SyncNet v2 file (`syncnet_v2.model`, told apart by its keys), a
StableSyncNet checkpoint (its config: a `syncnet.yaml` beside it, else the packaged preset its weights fit), or a
model folder or name (`demo`) whose model.yaml names a SyncNet. The clips come from the align step, already
cropped to the face, so no face detection is done here: the crops are only resized to the network's input size.
Without `--syncnet` the step passes every clip on unchecked, with a warning (see `FilterStep`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from latentsync.audio.load import load_audio
from latentsync.data.runner import Item, Result
from latentsync.data.steps.common import (
    HOP, SAMPLE_RATE, Evaluator, FilterStep, Loader, Piece, output_path, pass_on, write_pieces,
)
from latentsync.errors import VideoError
from latentsync.eval import lse as lse_eval
from latentsync.eval.sync import stable_syncnet_offset
from latentsync.models.syncnet_files import SyncNetwork, load_sync_network, stable_syncnet_resolution, syncnet_files
from latentsync.models.syncnet_v2 import CROP_SIZE, SyncNetV2
from latentsync.video.reader import VideoFrames

MIN_CONFIDENCE = lse_eval.MIN_CONFIDENCE  # LSE-C, SyncNet v2's scale (upstream); also for evaluators that name none
MIN_STABLE_CONFIDENCE = 0.15  # StableSyncNet's 1 - cosine scale; calibration in docs/data-pipeline.md
MAX_OFFSET = lse_eval.MAX_ABS_OFFSET  # frames
SEARCH = lse_eval.MAX_OFFSET  # offsets -15..+15 are searched, as upstream
STRIDE = 4  # a StableSyncNet window starts every 4 frames: steadier than every 16, as good as every frame


def load_sync_evaluator(weights: Path, device: str) -> Evaluator:
    """The SyncNet evaluator for what `--syncnet` names: clip -> {"conf", "offset", "min_conf", ...} (module
    docstring). Raises a one-line LatentSyncError for anything it cannot use."""
    network = load_sync_network(weights, device)
    if network.is_v2:
        return _lse_evaluator(network.net)  # type: ignore[arg-type]
    return _stable_evaluator(network)


def _lse_evaluator(net: SyncNetV2) -> Evaluator:
    def evaluate(clip: Path) -> dict[str, float]:
        result = lse_eval.lse(_square_frames(clip, CROP_SIZE), load_audio(clip), net, SEARCH)
        return {"conf": result.confidence, "dist": result.distance, "offset": result.offset,
                "min_conf": MIN_CONFIDENCE}  # fmt: skip

    return evaluate


def _stable_evaluator(network: SyncNetwork) -> Evaluator:
    """A StableSyncNet scores 16-frame pixel windows at its training resolution (`data.resolution`)."""
    resolution = stable_syncnet_resolution(network)
    net = network.net

    def evaluate(clip: Path) -> dict[str, float]:
        crops: list[np.ndarray | None] = list(_square_frames(clip, resolution))
        conf, offset, _ = stable_syncnet_offset(net, crops, load_audio(clip), SEARCH, STRIDE)  # type: ignore[arg-type]
        return {"conf": conf, "offset": offset, "min_conf": MIN_STABLE_CONFIDENCE}

    return evaluate


def _square_frames(clip: Path, size: int, chunk: int = 32) -> np.ndarray:
    """All frames of an aligned (square) face clip as uint8 RGB [N, size, size, 3], resized as the SyncNet
    dataset resizes training clips (bicubic, antialiased), `chunk` frames at a time to bound memory."""
    frames = VideoFrames(clip)
    if frames.info.width != frames.info.height:
        raise VideoError(f"{clip} is {frames.info.width}x{frames.info.height}, not a square face clip from align")
    out = np.empty((len(frames), size, size, 3), np.uint8)
    block: list[np.ndarray] = []
    for index, frame in enumerate(frames.iter_range(0, len(frames))):
        block.append(frame)
        if len(block) == chunk or index == len(frames) - 1:
            pixels = torch.from_numpy(np.stack(block)).permute(0, 3, 1, 2).float()
            if pixels.shape[-1] != size:
                pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", antialias=True)
            out[index + 1 - len(block) : index + 1] = pixels.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
            block = []
    return out


def shift_piece(num_frames: int, offset: int) -> Piece:
    """The frames and audio that put audio running `offset` frames ahead of the lips (behind, if negative) in sync."""
    return Piece(max(offset, 0), num_frames - max(-offset, 0), max(-offset, 0) * HOP)


@dataclass(frozen=True)
class SyncStep(FilterStep):
    name = "sync"
    what = "SyncNet"
    option = "--syncnet"
    loader: Loader | None = load_sync_evaluator

    def weight_files(self) -> list[Path]:
        assert self.weights is not None
        path, config = syncnet_files(self.weights)
        return [path] if config is None else [path, config]

    def settings(self) -> str:
        thresholds = f"min_conf=v2:{MIN_CONFIDENCE:g},stable:{MIN_STABLE_CONFIDENCE:g}"
        return f"{super().settings()} {thresholds} max_offset={MAX_OFFSET} stride={STRIDE}"

    def judge(self, item: Item, out_dir: Path, figures: dict[str, float], seconds: float) -> Result:
        conf, offset = float(figures["conf"]), int(round(figures["offset"]))
        least = float(figures.get("min_conf", MIN_CONFIDENCE))
        if conf < least:
            return Result.drop("low sync confidence", f"confidence {conf:.3g} < {least:g}", **figures)
        if abs(offset) > MAX_OFFSET:
            return Result.drop("audio offset", f"audio offset {offset} frames, more than {MAX_OFFSET}", **figures)
        if offset == 0:
            return pass_on(item, seconds, **figures)
        frames = VideoFrames(item.path)
        piece = shift_piece(len(frames), offset)
        out = output_path(out_dir, item.name)
        write_pieces(frames, load_audio(item.path, SAMPLE_RATE), [piece], [out])
        return Result([out], [piece.seconds], figures={**figures, "shifted_frames": offset})
