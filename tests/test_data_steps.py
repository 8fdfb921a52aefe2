"""Data-pipeline parts on small inputs: the manifest (torn lines, what counts as done), the segment rule, the
sync / quality filters with stand-in evaluators (drop rules, the audio shift's direction, skip and re-check), and
with the real ones: the demo model's SyncNet on held-out synthetic clips, SyncNet v2 and hyperIQA files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from latentsync.audio.load import load_audio
from latentsync.data.manifest import Manifest, Record, file_stamp
from latentsync.data import runner
from latentsync.data.runner import Item, LocalBackend, Result, Step, run_single
from latentsync.data.steps import quality
from latentsync.data.steps.common import Evaluator, Piece, write_pieces
from latentsync.data.steps.quality import QualityStep
from latentsync.data.steps.segments import segment_bounds
from latentsync.data.steps.sync import MIN_STABLE_CONFIDENCE, SyncStep, load_sync_evaluator, shift_piece
from latentsync.data.synth import synthesize
from latentsync.errors import CheckpointError, ConfigError
from latentsync.models.checkpoint import read_checkpoint
from latentsync.models.hyperiqa import HyperIQA
from latentsync.models.modeldir import ModelDir, ModelSpec
from latentsync.models.syncnet_files import is_syncnet_v2, stable_syncnet_config, syncnet_files
from latentsync.models.syncnet import load_syncnet_yaml, syncnet_presets
from latentsync.models.syncnet_v2 import SyncNetV2
from latentsync.paths import CONFIG_DIR
from latentsync.video.reader import VideoFrames
from media.clips import index_frame, read_index, write_clip

HOP = 640


def test_manifest_survives_a_torn_line_and_keeps_the_last_record(tmp_path: Path) -> None:
    src = tmp_path / "in.mp4"
    src.write_bytes(b"x")
    out = tmp_path / "step" / "out.mp4"
    out.parent.mkdir()
    out.write_bytes(b"y")
    manifest = Manifest(tmp_path / "step" / "manifest.jsonl", tmp_path)
    manifest.append(Record(src, status="error", reason="error", key="k", stamp=file_stamp(src)))
    with open(manifest.path, "a") as f:
        f.write('{"input": "in.mp4", "outp')  # a writer killed mid-line
    manifest.append(Record(src, (out,), (5.0,), key="k", stamp=file_stamp(src), figures={"frames": 125}))
    lines = manifest.path.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["output"] == ["step/out.mp4"]  # stored relative to the root
    record = manifest.read()[src]
    assert record.output == (out,) and record.figures == {"frames": 125} and record.is_done("k")
    assert not record.is_done("other settings")
    src.write_bytes(b"changed")
    assert not record.is_done("k")  # the input was replaced
    record = Record(src, (out,), (5.0,), key="k", stamp=file_stamp(src))
    out.unlink()
    assert not record.is_done("k")  # an output went missing


@pytest.mark.parametrize("frames", [0, 124, 125, 249, 250, 251, 374, 375, 1000, 1249, 1999])
def test_segment_rule(frames: int) -> None:
    bounds = segment_bounds(frames)
    if frames < 125:
        assert bounds == []
        return
    lengths = np.diff(bounds)
    assert bounds[0] == 0 and bounds[-1] == frames and len(lengths) == frames // 125
    assert lengths.min() >= 125 and lengths.max() < 250 and lengths.max() - lengths.min() <= 1


def _stand_in(weights: Path, device: str) -> Evaluator:
    """An evaluator that reports whatever figures its 'weights' file holds."""
    figures = json.loads(weights.read_text())
    return lambda clip: dict(figures)


def _weights(tmp_path: Path, **figures: float) -> Path:
    path = tmp_path / f"weights-{len(list(tmp_path.glob('weights-*')))}.json"
    path.write_text(json.dumps(figures))
    return path


@pytest.fixture(scope="module")
def click_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 frames showing their index, with silence except a click during frame 20."""
    audio = np.zeros(40 * HOP, np.float32)
    audio[20 * HOP : 21 * HOP] = 0.5 * np.sin(np.arange(HOP) * 0.3)
    path = tmp_path_factory.mktemp("click") / "click.mp4"
    return write_clip(path, [index_frame(i) for i in range(40)], 25, audio=(audio, 16000, 1))


def _click_frame(path: Path) -> int:
    audio = load_audio(path)
    energy = [float(np.sum(audio[k * HOP : (k + 1) * HOP] ** 2)) for k in range(len(audio) // HOP)]
    return int(np.argmax(energy))


@pytest.mark.parametrize("offset", [3, -2])
def test_sync_shift_moves_the_audio_the_right_way(click_clip: Path, tmp_path: Path, offset: int) -> None:
    """Audio `offset` frames ahead: the click at frame 20 belongs with the frame showing 20 + offset."""
    step = SyncStep(_weights(tmp_path, conf=7.0, offset=offset), _stand_in)
    result = step.process(Item(click_clip, "click.mp4", 1.6), tmp_path)
    assert result.status == "kept" and result.outputs == [tmp_path / "click.mp4"]
    frames = list(VideoFrames(result.outputs[0]).iter_range(0, 40 - abs(offset)))
    assert len(frames) == 40 - abs(offset) and result.seconds == [len(frames) / 25]
    assert read_index(frames[_click_frame(result.outputs[0])]) == 20 + offset
    assert shift_piece(40, offset).seconds == len(frames) / 25


def test_sync_and_quality_rules(click_clip: Path, tmp_path: Path) -> None:
    item = Item(click_clip, "click.mp4", 1.6)

    def judge(step_type, **figures):
        return step_type(_weights(tmp_path, **figures), _stand_in).process(item, tmp_path)

    assert judge(SyncStep, conf=2.9, offset=0).reason == "low sync confidence"
    assert judge(SyncStep, conf=5.0, offset=-7).reason == "audio offset"
    kept = judge(SyncStep, conf=5.0, offset=0)
    assert kept.status == "kept" and kept.outputs == [click_clip] and kept.figures["conf"] == 5.0
    assert judge(QualityStep, score=39.9).reason == "low image quality"
    kept = judge(QualityStep, score=40.0)
    assert kept.status == "kept" and kept.outputs == [click_clip]


def test_filters_without_weights_pass_unchecked_then_check_once_weights_come(click_clip: Path, tmp_path: Path) -> None:
    inputs = click_clip.parent
    report = run_single(SyncStep(), inputs, tmp_path / "sync", LocalBackend(1), quiet=True)
    assert report.steps[0].unchecked == 1 and "WARNING sync: 1 files NOT checked" in report.table()
    assert (tmp_path / "sync" / "filelist.txt").read_text() == "click.mp4\n"  # passed on: linked in
    assert (tmp_path / "sync" / "click.mp4").stat().st_ino == click_clip.stat().st_ino
    weights = _weights(tmp_path, conf=1.0, offset=0)
    report = run_single(SyncStep(weights, _stand_in), inputs, tmp_path / "sync", LocalBackend(1), quiet=True)
    assert report.steps[0].processed == 1 and report.steps[0].dropped == {"low sync confidence": 1}
    assert (tmp_path / "sync" / "filelist.txt").read_text() == ""


def test_one_run_per_output_folder(click_clip: Path, tmp_path: Path) -> None:
    import fcntl

    with open(tmp_path / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ConfigError, match="another"):
            run_single(SyncStep(), click_clip.parent, tmp_path, LocalBackend(1), quiet=True)


def test_weights_problems_fail_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        SyncStep(tmp_path / "missing.pt").check()
    weights = tmp_path / "syncnet.pt"
    weights.write_bytes(b"\0")
    for step in (SyncStep(weights), QualityStep(weights)):
        with pytest.raises(CheckpointError, match="cannot read checkpoint") as error:
            step.check()  # a one-line error before any work, not a failure per file
        assert "\n" not in str(error.value)
    (tmp_path / "in").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "latentsync.cli", "data", "sync", str(tmp_path / "in"), str(tmp_path / "out"),
         "--syncnet", str(tmp_path / "missing.pt")], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().startswith("latentsync: error: --syncnet"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


class _WhichGpu(Step):
    """A GPU step that reports which GPU its worker process sees."""

    name = "which_gpu"

    @property
    def uses_gpu(self) -> bool:
        return True

    def process(self, item: Item, out_dir: Path) -> Result:
        time.sleep(0.2)  # long enough for both workers to get files
        return Result([item.path], [0.0], figures={"gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()})


def test_gpu_steps_get_one_gpu_per_worker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(runner, "_gpu_count", lambda: 2)  # only the main process asks
    (tmp_path / "in").mkdir()
    for i in range(6):
        (tmp_path / "in" / f"{i}.txt").write_text("x")
    backend = LocalBackend(3)
    try:
        report = run_single(_WhichGpu(), tmp_path / "in", tmp_path / "out", backend, quiet=True)
        assert backend._pools[True]._max_workers == 2  # 3 workers asked, 2 GPUs
    finally:
        backend.close()
    assert report.steps[0].kept == 6
    records = runner.Manifest(tmp_path / "out" / "manifest.jsonl", tmp_path / "out").read().values()
    pairs = {(r.figures["pid"], r.figures["gpu"]) for r in records}
    pids, gpus = {pid for pid, _ in pairs}, [gpu for _, gpu in pairs]
    assert len(pairs) == len(pids) and len(set(gpus)) == len(gpus) and set(gpus) <= {"0", "1"}  # one GPU each


# The real evaluators. The demo model's StableSyncNet judges held-out synthetic clips (it was trained on seed 0 and
# validated on seed 1); SyncNet v2 and hyperIQA, whose weights are not bundled, run with random weights, which shows
# that their files are recognised, the clips reach them and the step applies their rule.

SEED = 13  # measured with the demo SyncNet: own audio conf 0.25, another clip's 0.07, threshold 0.15 (docs)
DELAY = 5  # frames (0.2 s)


def _remux(video: Path, wav: np.ndarray, out: Path, frames: int | None = None) -> Path:
    """`video`'s first `frames` frames (all by default) with `wav` as their audio."""
    source = VideoFrames(video)
    write_pieces(source, wav, [Piece(0, frames or len(source), 0)], [out])
    return out


@pytest.fixture(scope="module")
def talking(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of three 5 s aligned 128 px clips of one speaker: with its own audio, with that audio 0.2 s late,
    and with another clip's audio."""
    root = tmp_path_factory.mktemp("talking")
    synthesize(root / "synth", 2, seconds=(5, 5), seed=SEED)
    own, other = (root / "synth" / "aligned" / f"clip_000{i}.mp4" for i in (0, 1))
    clips = root / "clips"
    clips.mkdir()
    shutil.copyfile(own, clips / "insync.mp4")
    wav = load_audio(own)
    _remux(own, np.concatenate([np.zeros(DELAY * HOP, wav.dtype), wav[: -DELAY * HOP]]), clips / "delayed.mp4")
    _remux(own, load_audio(other), clips / "mismatched.mp4")
    return clips


def test_sync_step_with_the_demo_syncnet(talking: Path, tmp_path: Path) -> None:
    """`data sync --syncnet demo`: the in-sync clip is kept at offset 0, the late audio is measured at -5 (audio
    behind the lips is negative) and trimmed back into sync, another clip's audio is dropped for low confidence."""
    out = tmp_path / "sync"
    proc = subprocess.run(
        [sys.executable, "-m", "latentsync.cli", "data", "sync", str(talking), str(out), "--syncnet", "demo", "-q"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = {r.input.name: r for r in Manifest(out / "manifest.jsonl", out).read().values()}
    insync, delayed, mismatched = (records[f"{n}.mp4"] for n in ("insync", "delayed", "mismatched"))
    for record in records.values():
        assert record.figures["min_conf"] == MIN_STABLE_CONFIDENCE and f"stable:{MIN_STABLE_CONFIDENCE:g}" in record.key
    assert insync.status == "kept" and abs(insync.figures["offset"]) <= 1, insync
    offset = delayed.figures["offset"]
    assert delayed.status == "kept" and -6 <= offset <= -4 and delayed.figures["shifted_frames"] == offset, delayed
    assert mismatched.status == "dropped" and mismatched.reason == "low sync confidence", mismatched
    fixed = delayed.output[0]
    assert fixed == out / "delayed.mp4" and len(VideoFrames(fixed)) == 125 + offset
    again = load_sync_evaluator(Path("demo"), "cpu")(fixed)
    assert abs(again["offset"]) <= 1 and again["conf"] >= MIN_STABLE_CONFIDENCE, again


def test_syncnet_files_are_recognised(tmp_path: Path) -> None:
    demo = ModelDir.resolve("demo").spec
    assert demo.syncnet_weights is not None and demo.syncnet_config is not None
    assert syncnet_files(Path("demo")) == (demo.syncnet_weights, demo.syncnet_config)
    assert syncnet_files(demo.root) == syncnet_files(Path("demo"))
    assert syncnet_files(demo.syncnet_weights) == (demo.syncnet_weights, demo.root / "syncnet.yaml")  # beside it
    alone = tmp_path / "alone.pt"
    shutil.copyfile(demo.syncnet_weights, alone)
    assert syncnet_files(alone) == (alone, None)
    state = read_checkpoint(alone).state_dict
    assert not is_syncnet_v2(state)
    assert stable_syncnet_config(alone, state, None) == load_syncnet_yaml("small")  # found among the presets
    with pytest.raises(CheckpointError, match="do not fit"):
        stable_syncnet_config(alone, state, CONFIG_DIR / "syncnet" / "syncnet_16_pixel.yaml")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"conv.weight": torch.zeros(3)}}, foreign)
    with pytest.raises(CheckpointError) as error:
        SyncStep(foreign).check()
    message = str(error.value)
    assert "\n" not in message and all(name in message for name in syncnet_presets()), message
    with pytest.raises(ConfigError, match="model folder or a model name"):
        SyncStep(tmp_path / "missing").check()
    model = tmp_path / "model"
    model.mkdir()
    ModelSpec(model, "no-syncnet", 128, *(model / name for name in ("unet.yaml", "unet.pt", "vae", "w.pt"))).write()
    with pytest.raises(ConfigError, match="names no SyncNet"):
        SyncStep(model).check()


def test_syncnet_v2_weights_run_through_lse(talking: Path, tmp_path: Path) -> None:
    """A SyncNet v2 file is told by its keys and judged by LSE-C >= 3 (random weights: figures, not their values)."""
    weights = tmp_path / "syncnet_v2.model"
    torch.manual_seed(0)
    torch.save(SyncNetV2().state_dict(), weights)  # the published file is a bare state dict
    short = _remux(talking / "insync.mp4", load_audio(talking / "insync.mp4"), tmp_path / "in" / "short.mp4", 10)
    step = SyncStep(weights)
    step.check()
    result = step.process(Item(short, "short.mp4"), tmp_path / "out")
    figures = result.figures
    assert figures["min_conf"] == 3.0 and np.isfinite(figures["conf"]) and np.isfinite(figures["dist"])
    assert -15 <= figures["offset"] <= 15
    expected = "kept" if figures["conf"] >= 3 and abs(figures["offset"]) <= 6 else "dropped"
    assert result.status == expected


def test_quality_step_with_hyperiqa_weights(talking: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """hyperIQA (random weights) scores each clip; the clip is kept or dropped by the threshold, and a changed
    threshold is a changed setting, so the clips are judged again."""
    weights = tmp_path / "koniq_pretrained.pkl"
    torch.manual_seed(0)
    torch.save(HyperIQA().state_dict(), weights)
    inputs = tmp_path / "in"
    inputs.mkdir()
    os.link(talking / "insync.mp4", inputs / "a.mp4")
    monkeypatch.setattr(quality, "MIN_SCORE", -1e9)
    report = run_single(QualityStep(weights), inputs, tmp_path / "out", LocalBackend(1), quiet=True)
    record = Manifest(tmp_path / "out" / "manifest.jsonl", tmp_path / "out").read()[inputs / "a.mp4"]
    score = record.figures["score"]
    assert report.steps[0].kept == 1 and np.isfinite(score)
    monkeypatch.setattr(quality, "MIN_SCORE", score + 1)
    report = run_single(QualityStep(weights), inputs, tmp_path / "out", LocalBackend(1), quiet=True)
    assert report.steps[0].dropped == {"low image quality": 1}
    record = Manifest(tmp_path / "out" / "manifest.jsonl", tmp_path / "out").read()[inputs / "a.mp4"]
    assert record.figures["score"] == pytest.approx(score)


def test_min_seconds_keeps_short_material(click_clip: Path, tmp_path: Path) -> None:
    """A 1.6 s clip: dropped at the default 5 s; passed on whole with --min-seconds 1; cut in two at 0.8."""
    from latentsync.data.steps.segments import SegmentsStep
    from latentsync.errors import ConfigError

    item = Item(click_clip, "click.mp4", 1.6)
    assert SegmentsStep().process(item, tmp_path / "a").reason == "too short"
    kept = SegmentsStep(min_seconds=1).process(item, tmp_path / "b")
    assert kept.reason is None and kept.figures == {"segments": 1} and kept.seconds == [1.6]
    cut = SegmentsStep(min_seconds=0.8).process(item, tmp_path / "c")
    assert [round(s * 25) for s in cut.seconds] == [20, 20] and len(cut.outputs) == 2
    assert SegmentsStep(min_seconds=2).key() != SegmentsStep().key()  # a changed setting redoes the step
    with pytest.raises(ConfigError, match="--min-seconds must be at least one frame"):
        SegmentsStep(min_seconds=0)
