"""Training samples from a folder of face-aligned 25 fps clips: SyncNet pairs and U-Net windows.

A data folder holds `filelist.txt` (one clip per line, relative to the folder or absolute) and the clips,
each a res x res face crop with the speech as its audio track. Video frames are decoded per sample, only the
16 needed (a cache of decoded frames would be larger than the videos). The audio side is cached per clip: the
SyncNet mel of the whole clip and, for the U-Net, the Whisper features [T, 5, 384] in float16, because running
Whisper for every sample of every epoch would cost more than the U-Net step on a CPU worker. Cache files live in
`<root>/.cache/<key>/<clip>.safetensors`, where the key is `mel` (mel only) or the Whisper file's name and
content hash, so features of two encoders never mix. Each file records the clip's size and mtime and is
recomputed when the clip changes.

Sampling follows upstream: a random clip, a random 16-frame window; SyncNet negatives pair the frames with the
mel of a non-overlapping window of the same clip; the U-Net reference window never overlaps the target. Every
item draws from a generator seeded by (seed, epoch, index), so a sample does not depend on which DataLoader
worker made it, and validation sets are fixed by their seed.

Clips whose size differs from the training resolution are resized (bicubic, antialiased, as upstream's
transform); non-square clips are rejected, since they are not face-aligned crops.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

from latentsync.audio.features import audio_features, frame_windows
from latentsync.audio.load import load_audio
from latentsync.audio.mel import mel_window_length, mel_window_start, melspectrogram
from latentsync.errors import CheckpointError, ConfigError, LatentSyncError, VideoError
from latentsync.pipeline.progress import progress_bar
from latentsync.video.reader import VideoFrames, probe

if TYPE_CHECKING:
    from latentsync.data.latents import LatentCache

log = logging.getLogger(__name__)

CACHE_VERSION = "1"  # bump when the cached arrays change meaning
MIN_UNET_FRAMES = 48  # upstream skips shorter clips for U-Net training
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class ClipInfo:
    """A clip and what its cache entry says about it (enough to plan windows without opening the video)."""

    path: Path
    cache: Path
    num_frames: int  # video frames at 25 fps
    mel_frames: int  # SyncNet mel frames (80 per second)
    size: int  # width == height

    def max_start(self, num_frames: int) -> int:
        """Last start frame whose `num_frames`-frame video window and mel window both lie inside the clip.

        Upstream skips windows whose mel runs past the audio; this bounds the starts instead. The mel bound is
        the largest s with int(80 s / 25) + length <= mel_frames. -1 when no window fits.
        """
        spare = self.mel_frames - mel_window_length(num_frames)
        mel_last = (25 * (spare + 1) - 1) // 80 if spare >= 0 else -1
        return min(self.num_frames - num_frames, mel_last)


def read_filelist(root: str | os.PathLike, filelist: str | os.PathLike) -> list[Path]:
    """Clip paths of a filelist; blank lines and `#` comments are skipped.

    A relative `filelist` is looked up in `root`; relative clip names are taken from the list's own folder, so a
    held-out list in another dataset (`data.val_filelist=/data/val/aligned/filelist.txt`) names that dataset's
    clips, not same-named ones under `root`. Every listed clip must exist: a typo should fail before hours of training, not in a worker mid-epoch.
    """
    root = Path(root)
    listing = Path(filelist) if Path(filelist).is_absolute() else root / filelist
    if not listing.is_file():
        raise ConfigError(f"filelist not found: {listing}")
    names = [line.strip() for line in listing.read_text().splitlines()]
    clips = [listing.parent / name for name in names if name and not name.startswith("#")]  # absolute stays absolute
    if not clips:
        raise ConfigError(f"filelist {listing} lists no clips")
    missing = [c for c in clips if not c.is_file()]
    if missing:
        raise ConfigError(f"{len(missing)} clips listed in {listing} do not exist (first: {missing[0]})")
    return clips


def encoder_key(encoder_path: str | os.PathLike | None) -> str:
    """Cache folder name: `mel` without an encoder, else `<file stem>-<first 16 hex of its sha256>`.

    Content rather than path or mtime: a copied or re-downloaded tiny.pt keeps its cache, a different one never
    reuses another's features.
    """
    if encoder_path is None:
        return "mel"
    path = Path(encoder_path)
    if not path.is_file():
        raise CheckpointError(f"Whisper checkpoint not found: {path}")
    return file_key(str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=8)
def file_key(path: str, size: int, mtime_ns: int) -> str:
    """Hash once per process; size and mtime are only part of the memo key, so a replaced file is hashed anew."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"{Path(path).stem}-{digest.hexdigest()[:16]}"


class AudioCache:
    """Computes, stores and looks up the per-clip audio arrays; safe to share with DataLoader workers.

    The Whisper encoder is loaded lazily on first use in each process (on the CPU: workers cannot use a CUDA
    context made before they forked), so a fully cached dataset never loads it.
    """

    def __init__(self, root: str | os.PathLike, encoder_path: str | os.PathLike | None = None) -> None:
        self.root = Path(root)
        self.encoder_path = None if encoder_path is None else Path(encoder_path)
        self.key = encoder_key(encoder_path)
        self.dir = self.root / ".cache" / self.key
        self._encoder: torch.nn.Module | None = None

    def path_for(self, clip: Path) -> Path:
        return cache_path(self.root, self.dir, clip)

    def info(self, clip: Path) -> ClipInfo:
        """The clip's cache entry, computed and written first if it is missing or older than the clip."""
        cache = self.path_for(clip)
        stamp = clip_stamp(clip)
        if cache.is_file():
            with safe_open(str(cache), framework="pt") as f:
                meta = f.metadata() or {}
            if meta.get("stamp") == stamp and meta.get("version") == CACHE_VERSION:
                return ClipInfo(clip, cache, int(meta["num_frames"]), int(meta["mel_frames"]), int(meta["size"]))
        return self._compute(clip, cache, stamp)

    def _compute(self, clip: Path, cache: Path, stamp: str) -> ClipInfo:
        video = probe(clip)
        if video.width != video.height:
            raise VideoError(f"{clip} is {video.width}x{video.height}; training clips must be square face crops")
        wav = load_audio(clip, SAMPLE_RATE)
        tensors = {"mel": torch.from_numpy(melspectrogram(wav))}
        if self.encoder_path is not None:
            tensors["whisper"] = audio_features(wav, self._whisper(), dtype=torch.float16)
        info = ClipInfo(clip, cache, video.num_frames, tensors["mel"].shape[1], video.width)
        meta = {"version": CACHE_VERSION, "stamp": stamp, "num_frames": str(info.num_frames),
                "mel_frames": str(info.mel_frames), "size": str(info.size)}
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")  # per process: workers may race on a clip
        try:
            save_file(tensors, str(tmp), metadata=meta)
            os.replace(tmp, cache)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return info

    def _whisper(self) -> torch.nn.Module:
        if self._encoder is None:
            from latentsync.models.whisper import load_whisper_encoder

            assert self.encoder_path is not None
            self._encoder = load_whisper_encoder(self.encoder_path)
        return self._encoder

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_encoder": None}  # each worker loads its own copy


def cache_path(root: Path, cache_dir: Path, clip: Path) -> Path:
    """A clip's cache file: its place under root mirrored in `cache_dir`; clips outside root get a name from their
    absolute path."""
    try:
        rel = clip.resolve().relative_to(root.resolve())
    except ValueError:
        rel = Path("_external") / f"{hashlib.sha1(str(clip.resolve()).encode()).hexdigest()[:16]}-{clip.name}"
    return cache_dir / f"{rel}.safetensors"


def clip_stamp(clip: Path) -> str:
    st = clip.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


class _CacheJobs(Dataset):
    """One item per clip, so a DataLoader spreads cache computation over worker processes."""

    def __init__(self, cache: AudioCache, clips: Sequence[Path]) -> None:
        self.cache, self.clips = cache, list(clips)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> ClipInfo | LatentSyncError:
        try:
            return self.cache.info(self.clips[index])
        except LatentSyncError as exc:  # returned, and raised by the main process: one line, not a worker traceback
            return exc


def prepare_cache(
    root: str | os.PathLike,
    filelist: str | os.PathLike = "filelist.txt",
    encoder_path: str | os.PathLike | None = None,
    workers: int = 0,
    quiet: bool = False,
) -> list[ClipInfo]:
    """Make sure every clip of the filelist has a current cache entry; returns their infos in filelist order.

    Entries already present cost one header read. `workers` > 0 computes missing ones in that many processes.
    """
    cache = AudioCache(root, encoder_path)
    jobs = _CacheJobs(cache, read_filelist(root, filelist))
    loader = DataLoader(jobs, batch_size=None, num_workers=workers, collate_fn=_as_is)
    infos: list[ClipInfo] = []
    with progress_bar(f"audio cache ({cache.key})", unit="clip", quiet=quiet) as progress:
        for info in loader:
            if isinstance(info, LatentSyncError):
                raise info
            infos.append(info)
            progress(len(infos), len(jobs))
    return infos


def _as_is(info: ClipInfo | LatentSyncError) -> ClipInfo | LatentSyncError:
    return info


class _ClipDataset(Dataset):
    """Shared parts: clip selection, seeded sampling, window decoding and the mel slice."""

    def __init__(
        self,
        root: str | os.PathLike,
        filelist: str | os.PathLike,
        resolution: int,
        num_frames: int,
        min_frames: int,
        encoder_path: str | os.PathLike | None,
        samples_per_epoch: int,
        seed: int,
    ) -> None:
        if resolution <= 0 or resolution % 2 or num_frames <= 0 or samples_per_epoch <= 0:
            raise ConfigError(
                f"need an even resolution > 0, num_frames > 0 and samples_per_epoch > 0, "
                f"got {resolution}, {num_frames}, {samples_per_epoch}"
            )
        infos = prepare_cache(root, filelist, encoder_path, quiet=True)
        # starts 0..max_start, and a second window at least num_frames away needs max_start >= num_frames
        self.clips = [c for c in infos if c.num_frames >= min_frames and c.max_start(num_frames) >= num_frames]
        self.skipped = len(infos) - len(self.clips)
        if self.skipped:
            log.warning("%d of %d clips in %s are too short (need %d frames with audio) and are skipped",
                        self.skipped, len(infos), filelist, max(min_frames, 2 * num_frames))
        if not self.clips:
            raise ConfigError(f"no clip in {filelist} under {root} is long enough ({min_frames} frames with audio)")
        self.resolution = resolution
        self.num_frames = num_frames
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.samples_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Change every sample; DataLoader workers see it from the next pass (they are re-created per pass)."""
        self.epoch = epoch

    def _rng(self, index: int) -> np.random.Generator:
        """Seeded by (seed, epoch, index): the same item whichever worker makes it, new items each epoch."""
        return np.random.default_rng([self.seed, self.epoch, index])

    def _two_windows(self, rng: np.random.Generator) -> tuple[ClipInfo, int, int]:
        """A random clip and two window starts at least num_frames apart, each uniform over what is possible.

        In a clip with fewer than 2 * num_frames possible starts, the middle ones have no partner and are not drawn.
        """
        clip = self.clips[int(rng.integers(len(self.clips)))]
        last, f = clip.max_start(self.num_frames), self.num_frames
        starts = np.arange(last + 1)
        start = int(rng.choice(starts[(starts >= f) | (starts <= last - f)]))
        return clip, start, int(rng.choice(starts[np.abs(starts - start) >= f]))

    def _frames(self, clip: ClipInfo, start: int) -> torch.Tensor:
        """Frames start .. start+F-1 as [F, 3, res, res] floats in [-1, 1]."""
        video = _open_video(str(clip.path))
        pixels = np.stack(list(video.iter_range(start, start + self.num_frames)))
        frames = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
        if frames.shape[-1] != self.resolution or frames.shape[-2] != self.resolution:
            size = (self.resolution, self.resolution)
            frames = F.interpolate(frames, size=size, mode="bicubic", antialias=True).clamp_(0, 255)
        return frames / 127.5 - 1.0

    def _mel(self, clip: ClipInfo, start: int) -> torch.Tensor:
        """The SyncNet mel window of video frames start.., [1, 80, 52] for 16 frames."""
        first = mel_window_start(start)
        with safe_open(str(clip.cache), framework="pt") as f:
            window = f.get_slice("mel")[:, first : first + mel_window_length(self.num_frames)]
        return window.float().unsqueeze(0)


@functools.lru_cache(maxsize=256)
def _open_video(path: str) -> VideoFrames:
    """Keep clips' timelines per process: opening a VideoFrames demuxes the whole file, half the cost of a sample."""
    return VideoFrames(path)


@dataclass(frozen=True)
class SyncSample:
    """Where a SyncNet item comes from: frames at `start`, mel at `audio_start`, y = 1 when they coincide."""

    clip: ClipInfo
    start: int
    audio_start: int
    y: float


class SyncNetDataset(_ClipDataset):
    """16 frames and a mel window; half the items in sync (y = 1), half paired with another window's mel (y = 0).

    Items: frames [F, 3, res, res] in [-1, 1] (the model takes the lower half), mel [1, 80, 52], y (float).
    With `shifts` K > 0 they also hold `shifted_mel` [K, 1, 80, 52]: mels of the same clip starting at least
    `min_shift` frames before or after the frames (drawn with replacement), the candidates a multi-way matching
    loss sets against the in-sync mel. Only the mel is needed, so the cache has no Whisper features unless
    `encoder_path` is given. `augment` varies each window's frames (all alike, the mel untouched): a horizontal
    flip, a contrast gain of 0.75-1.25 and a shift of up to `resolution` / 32 pixels, so that a small set of people
    teaches timing rather than the look of their clips.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        filelist: str | os.PathLike,
        resolution: int,
        num_frames: int = 16,
        samples_per_epoch: int = 1000,
        seed: int = 1247,
        encoder_path: str | os.PathLike | None = None,
        shifts: int = 0,
        min_shift: int = 4,
        augment: bool = False,
    ) -> None:
        super().__init__(root, filelist, resolution, num_frames, 2 * num_frames, encoder_path, samples_per_epoch, seed)
        self.shifts, self.min_shift, self.augment = shifts, min_shift, augment

    def sample(self, index: int) -> SyncSample:
        """Which windows item `index` pairs (no decoding), so the sampling rules can be checked directly."""
        rng = self._rng(index)
        clip, start, other = self._two_windows(rng)
        positive = bool(rng.random() < 0.5)
        return SyncSample(clip, start, start if positive else other, 1.0 if positive else 0.0)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s = self.sample(index)
        frames, mel = self._frames(s.clip, s.start), self._mel(s.clip, s.audio_start)
        if self.augment:
            frames = _vary(frames, np.random.default_rng([self.seed, self.epoch, index, 2]))
        item = {"frames": frames, "mel": mel, "y": torch.tensor(s.y)}
        if self.shifts:
            rng = np.random.default_rng([self.seed, self.epoch, index, 1])  # apart from `sample`'s draws
            starts = np.arange(s.clip.max_start(self.num_frames) + 1)
            starts = starts[np.abs(starts - s.start) >= self.min_shift]
            item["shifted_mel"] = torch.stack([self._mel(s.clip, int(k)) for k in rng.choice(starts, self.shifts)])
        return item


def _vary(frames: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """One random flip, contrast gain and shift for a whole window [F, 3, H, W] in [-1, 1] (edges replicated)."""
    if rng.random() < 0.5:
        frames = frames.flip(-1)
    frames = (frames * rng.uniform(0.75, 1.25)).clamp(-1, 1)
    pad = max(1, frames.shape[-1] // 32)
    dy, dx = (int(v) for v in rng.integers(0, 2 * pad + 1, size=2))
    padded = F.pad(frames, (pad, pad, pad, pad), mode="replicate")
    return padded[..., dy : dy + frames.shape[-2], dx : dx + frames.shape[-1]]


class UNetDataset(_ClipDataset):
    """A target window, a non-overlapping reference window, the target's Whisper windows and its SyncNet mel.

    Items: frames and ref_frames [F, 3, res, res] in [-1, 1], audio [F, 50, 384] float32 (whisper steps 2i-4 ..
    2i+5 of each target frame i, see `frame_windows`), mel [1, 80, 52]. Clips under 48 frames are skipped.
    With a `LatentCache`, items also hold the VAE posteriors, [F, 4, h, w] each: `latent_mean`/`latent_std`
    (target), `masked_mean`/`masked_std` (target, lower face masked) and `ref_mean`/`ref_std`; `frames=False`
    then skips decoding the video, which only the pixel-space losses need.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        filelist: str | os.PathLike,
        resolution: int,
        num_frames: int = 16,
        *,
        encoder_path: str | os.PathLike,
        samples_per_epoch: int = 1000,
        seed: int = 1247,
        latents: LatentCache | None = None,
        frames: bool = True,
    ) -> None:
        super().__init__(root, filelist, resolution, num_frames, MIN_UNET_FRAMES, encoder_path, samples_per_epoch, seed)
        if latents is None and not frames:
            raise ConfigError("a U-Net sample needs its frames or their cached latents")
        if latents is not None and latents.resolution != resolution:
            raise ConfigError(f"the latent cache is for {latents.resolution} px, the dataset is {resolution} px")
        self.latents = latents
        self.with_frames = frames

    def sample(self, index: int) -> tuple[ClipInfo, int, int]:
        """(clip, target start, reference start)."""
        return self._two_windows(self._rng(index))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        clip, start, ref = self.sample(index)
        with safe_open(str(clip.cache), framework="pt") as f:
            features = f.get_tensor("whisper")
        audio = frame_windows(features, frames=torch.arange(start, start + self.num_frames)).float()
        item = {"audio": audio, "mel": self._mel(clip, start)}
        if self.with_frames:
            item.update(frames=self._frames(clip, start), ref_frames=self._frames(clip, ref))
        if self.latents is not None:
            target = self.latents.window(clip.path, start, self.num_frames)
            reference = self.latents.window(clip.path, ref, self.num_frames, masked=False)
            item.update(latent_mean=target["mean"], latent_std=target["std"], masked_mean=target["masked_mean"],
                        masked_std=target["masked_std"], ref_mean=reference["mean"], ref_std=reference["std"])
        return item
