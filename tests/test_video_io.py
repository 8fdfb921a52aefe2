"""Video reading (constant-25-fps resampling, ping-pong looping, errors) and writing (H.264 + AAC, atomic)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from media.clips import index_frame, read_index, truncate, write_clip, write_vfr_clip
from media.speech import speech, write_audio

from latentsync.audio.load import load_audio
from latentsync.errors import AudioError, VideoError
from latentsync.video.reader import VideoFrames, probe
from latentsync.video.writer import VideoWriter, check_writable


def _indices(frames) -> list[int]:
    return [read_index(f) for f in frames]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-12)))


def _tone(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Every input clip the reader tests need, written once."""
    d = tmp_path_factory.mktemp("clips")
    return {
        "25": write_clip(d / "c25.mp4", [index_frame(i) for i in range(40)], audio=(_tone(1.6, 16000), 16000, 1)),
        "30": write_clip(d / "c30.mp4", [index_frame(i) for i in range(45)], fps=30),
        "gop": write_clip(d / "gop.mkv", [index_frame(i) for i in range(30)], fps=25, codec_options={"g": "5"}),
        "png": _write_png(d / "still.png", index_frame(77)),
    }


def _write_png(path: Path, rgb: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), rgb[..., ::-1])
    return path


# --- reader: resampling ---------------------------------------------------------------------------------


def test_30fps_source_maps_by_timestamp(clips):
    frames = VideoFrames(clips["30"])
    assert len(frames) == 38  # 45 frames / 30 fps = 1.5 s -> 37.5 slots, a half slot rounds up
    assert _indices(frames.iter_range(0, len(frames))) == [k * 30 // 25 for k in range(38)]


def test_25fps_passthrough_and_probe(clips):
    info = probe(clips["25"])
    assert (info.width, info.height, info.num_frames, info.source_fps) == (160, 120, 40, 25.0)
    assert info.duration == pytest.approx(1.6) and info.has_audio and not info.is_image
    frames = list(VideoFrames(clips["25"]).iter_range(0, 40))
    assert _indices(frames) == list(range(40))
    assert all(f.dtype == np.uint8 and f.shape == (120, 160, 3) for f in frames)


def test_variable_frame_rate(tmp_path):
    times = [0, 30, 50, 130, 140, 200, 330, 400, 410, 520]
    path = write_vfr_clip(tmp_path / "vfr.mp4", [index_frame(i) for i in range(10)], times)
    frames = VideoFrames(path)
    assert len(frames) == 14  # the last frame (520 ms) lasts until 560 ms
    expected = [max(i for i, t in enumerate(times) if t <= 40 * k) for k in range(14)]
    assert _indices(frames.iter_range(0, 14)) == expected
    assert not probe(path).has_audio


def test_iter_range_from_the_middle(clips):
    frames = VideoFrames(clips["30"])
    full = list(frames.iter_range(0, len(frames)))
    middle = list(frames.iter_range(17, 29))
    assert _indices(middle) == [k * 30 // 25 for k in range(17, 29)]
    assert all(np.array_equal(a, b) for a, b in zip(middle, full[17:29]))


def test_rotation_metadata_is_applied(tmp_path):
    path = write_clip(tmp_path / "portrait.mp4", [index_frame(i) for i in range(3)], rotation=90)
    info = probe(path)
    assert (info.width, info.height) == (120, 160)
    frame = next(VideoFrames(path).iter_range(2, 3))
    assert frame.shape == (160, 120, 3) and read_index(np.rot90(frame, -1)) == 2


# --- reader: looping ------------------------------------------------------------------------------------


def _pingpong(n: int, total: int) -> list[int]:
    order: list[int] = []
    while len(order) < total:
        order += list(range(n)) if len(order) // n % 2 == 0 else list(range(n - 1, -1, -1))
    return order[:total]


@pytest.mark.parametrize("key", ["25", "gop"])  # mp4 with one keyframe; mkv with a keyframe every 5 frames
@pytest.mark.parametrize("passes", [0.2, 1.0, 2.5])
def test_looped_is_ping_pong_with_repeated_turn_frame(clips, key, passes):
    frames = VideoFrames(clips[key])
    n = len(frames)
    total = round(passes * n)
    forward = list(frames.iter_range(0, n))
    pairs = list(frames.looped(total, block=6))
    assert [i for i, _ in pairs] == _pingpong(n, total)
    assert _indices(f for _, f in pairs) == _pingpong(n, total)
    assert all(np.array_equal(f, forward[i]) for i, f in pairs)


def test_looped_with_blocks_of_one(clips):
    pairs = list(VideoFrames(clips["gop"]).looped(35, block=1))
    assert [i for i, _ in pairs] == _indices(f for _, f in pairs) == _pingpong(30, 35)


def test_low_fps_source_repeats_frames_as_independent_arrays(tmp_path):
    path = write_clip(tmp_path / "c10.mp4", [index_frame(i) for i in range(10)], fps=10)
    frames = list(VideoFrames(path).iter_range(0, 25))
    assert _indices(frames) == [k * 10 // 25 for k in range(25)]
    frames[0][:] = 0  # callers edit frames in place: a repeated source frame must not share memory
    assert frames[1].any() and read_index(frames[1]) == 0


def test_still_image_is_one_frame_looped(clips):
    info = probe(clips["png"])
    assert info.is_image and info.num_frames == 1 and (info.width, info.height) == (160, 120)
    pairs = list(VideoFrames(clips["png"]).looped(5))
    assert [i for i, _ in pairs] == [0] * 5
    assert all(np.array_equal(f, index_frame(77)) for _, f in pairs)


# --- reader: errors -------------------------------------------------------------------------------------


@pytest.fixture
def broken(tmp_path, clips) -> dict[str, Path]:
    text = tmp_path / "notes.txt"
    text.write_text("not a video\n" * 50)
    return {
        "missing": tmp_path / "nope.mp4",
        "text": text,
        "truncated": truncate(clips["25"], tmp_path / "half.mp4"),
        "audio-only": write_audio(tmp_path / "speech.wav", _tone(0.5, 16000), 16000),
        "directory": tmp_path,
    }


@pytest.mark.parametrize("kind", ["missing", "text", "truncated", "audio-only", "directory"])
def test_unusable_inputs_raise_one_line_video_error(broken, kind):
    with pytest.raises(VideoError) as err:
        probe(broken[kind])
    message = str(err.value)
    assert "\n" not in message and broken[kind].name in message


def test_corruption_found_mid_stream_raises(tmp_path):
    # faststart puts the index first, so a half file still opens and decodes until the data runs out
    rng = np.random.default_rng(0)
    noisy = [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(30)]
    path = truncate(write_clip(tmp_path / "full.mp4", noisy, options={"movflags": "faststart"}), tmp_path / "cut.mp4")
    frames = VideoFrames(path)
    with pytest.raises(VideoError, match="cut.mp4"):
        list(frames.iter_range(0, len(frames)))


# --- writer ---------------------------------------------------------------------------------------------


def test_round_trip_keeps_frames_and_quality(tmp_path):
    source = [index_frame(i) for i in range(40)]
    out = tmp_path / "out.mp4"
    with VideoWriter(out, 160, 120) as writer:
        for frame in source:
            writer.write(frame)
    info = probe(out)
    assert (info.num_frames, info.source_fps, info.width, info.height, info.has_audio) == (40, 25.0, 160, 120, False)
    decoded = list(VideoFrames(out).iter_range(0, 40))
    assert _indices(decoded) == list(range(40))
    assert min(_psnr(a, b) for a, b in zip(decoded, source)) > 37  # measured 39.6 .. 43.2 dB at crf 18
    assert os.listdir(tmp_path) == ["out.mp4"]


def test_odd_size_duplicates_last_row_and_column(tmp_path):
    rng = np.random.default_rng(1)
    frame = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (161, 121), interpolation=cv2.INTER_LINEAR)
    out = tmp_path / "odd.mp4"
    with VideoWriter(out, 161, 121) as writer:
        assert (writer.encoded_width, writer.encoded_height) == (162, 122)
        writer.write(frame)
    decoded = next(VideoFrames(out).iter_range(0, 1))
    assert decoded.shape == (122, 162, 3) and _psnr(decoded[:121, :161], frame) > 32  # measured 34.7 dB
    assert np.abs(decoded[:, 161].astype(int) - decoded[:, 160]).mean() < 3
    assert np.abs(decoded[121].astype(int) - decoded[120]).mean() < 3


def _audio_info(path: Path) -> tuple[int, int]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return stream.sample_rate, stream.channels


@pytest.mark.parametrize("seconds", [3.0, 0.5])
def test_audio_is_cut_or_padded_to_the_video(tmp_path, seconds):
    audio = write_audio(tmp_path / "speech.m4a", _tone(seconds, 16000), 16000)
    out = tmp_path / "out.mp4"
    with VideoWriter(out, 160, 120, audio_path=audio) as writer:
        for i in range(40):
            writer.write(index_frame(i))
    assert _audio_info(out) == (16000, 1)
    assert abs(len(load_audio(out, 16000)) - 1.6 * 16000) <= 1024  # within one AAC frame of 40 / 25 s
    assert probe(out).num_frames == 40


def test_stereo_44k_speech_keeps_its_rate_and_channels(tmp_path):
    audio = write_audio(tmp_path / "speech.wav", speech("Hello, this is a test.", 44100), 44100, channels=2)
    out = tmp_path / "out.mp4"
    with VideoWriter(out, 160, 120, audio_path=audio) as writer:
        for i in range(30):
            writer.write(index_frame(i))
    assert _audio_info(out) == (44100, 2)
    assert abs(len(load_audio(out, 44100)) - 1.2 * 44100) <= 1024
    assert np.abs(load_audio(out, 16000)).max() > 0.05  # the speech itself, not silence


def test_audio_can_come_from_a_video(clips, tmp_path):
    out = tmp_path / "out.mp4"
    with VideoWriter(out, 160, 120, audio_path=clips["25"]) as writer:
        for i in range(20):
            writer.write(index_frame(i))
    assert _audio_info(out) == (16000, 1) and abs(len(load_audio(out)) - 0.8 * 16000) <= 1024


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failure_inside_with_leaves_nothing(tmp_path, error):
    out = tmp_path / "out.mp4"
    with pytest.raises(error):
        with VideoWriter(out, 160, 120, audio_path=write_audio(tmp_path / "a.wav", _tone(1, 16000), 16000)) as writer:
            for i in range(30):  # enough for x264's lookahead to emit packets, so the temp file exists
                writer.write(index_frame(i))
            assert any(name.startswith(".out.mp4") for name in os.listdir(tmp_path))
            raise error
    assert sorted(os.listdir(tmp_path)) == ["a.wav"]


def test_abort_and_bad_audio_leave_nothing(tmp_path):
    out = tmp_path / "out.mp4"
    writer = VideoWriter(out, 160, 120)
    writer.write(index_frame(0))
    writer.abort()
    with pytest.raises(AudioError, match="nope.wav"):
        VideoWriter(out, 160, 120, audio_path=tmp_path / "nope.wav")
    assert os.listdir(tmp_path) == []


def test_check_writable(tmp_path):
    assert check_writable(tmp_path / "out.mp4") == tmp_path / "out.mp4"
    for bad, why in [(tmp_path / "missing" / "out.mp4", "does not exist"), (tmp_path, "is a directory")]:
        with pytest.raises(VideoError, match=why):
            check_writable(bad)
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(VideoError, match="not writable"):
            check_writable(locked / "out.mp4")


def test_720p_encode_and_decode_speed(tmp_path, capsys):
    """Reported numbers, loosely bounded: encoding must not dominate a CPU run (2 cores here)."""
    rng = np.random.default_rng(2)
    coarse = cv2.resize(rng.integers(0, 256, (18, 32, 3), dtype=np.uint8), (1280, 720), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0, 6, (720, 1280, 1))
    source = [np.clip(np.roll(coarse, 3 * i, axis=1) + grain, 0, 255).astype(np.uint8) for i in range(25)]
    out = tmp_path / "hd.mp4"
    start = time.perf_counter()
    with VideoWriter(out, 1280, 720) as writer:
        for frame in source:
            writer.write(frame)
    encode_ms = (time.perf_counter() - start) / 25 * 1000
    start = time.perf_counter()
    decoded = list(VideoFrames(out).iter_range(0, 25))
    decode_ms = (time.perf_counter() - start) / 25 * 1000
    with capsys.disabled():
        print(f"\n720p: encode {encode_ms:.1f} ms/frame, decode {decode_ms:.1f} ms/frame")
    assert len(decoded) == 25 and encode_ms < 250 and decode_ms < 100
