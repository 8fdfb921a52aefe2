"""load_audio: any container/codec/rate/channel count to float32 mono 16 kHz, and one-line AudioErrors."""

from __future__ import annotations

import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from latentsync.audio.load import load_audio, read_audio
from latentsync.errors import AudioError


def tone(rate: int, seconds: float, channels: int) -> np.ndarray:
    """[channels, n] float32 440 Hz tone; channel c has amplitude 0.5 / (c + 1), so a mono mix is checkable."""
    t = np.arange(int(rate * seconds)) / rate
    return np.stack([0.5 / (c + 1) * np.sin(2 * np.pi * 440 * t) for c in range(channels)]).astype(np.float32)


def write_media(path: Path, codec: str | None, rate: int, samples: np.ndarray | None, video_frames: int = 0) -> Path:
    """Mux an optional audio stream (planar float input, converted to the codec's format) and optional video."""
    with av.open(str(path), mode="w") as out:
        vstream = None
        if video_frames:
            vstream = out.add_stream("mpeg4", rate=25)
            vstream.width, vstream.height, vstream.pix_fmt = 64, 48, "yuv420p"
        if codec is not None and samples is not None:
            astream = out.add_stream(codec, rate=rate)
            astream.layout = "stereo" if samples.shape[0] == 2 else "mono"
            fmt = astream.codec_context.codec.audio_formats[0].name
            resampler = av.AudioResampler(format=fmt, layout=astream.layout.name, rate=rate)
            for start in range(0, samples.shape[1], 1024):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start : start + 1024]),
                                                   format="fltp", layout=astream.layout.name)
                frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
                for chunk in resampler.resample(frame):
                    out.mux(astream.encode(chunk))
            for chunk in resampler.resample(None):
                out.mux(astream.encode(chunk))
            out.mux(astream.encode(None))
        if vstream is not None:
            for i in range(video_frames):
                frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 8 * i, np.uint8), format="rgb24")
                out.mux(vstream.encode(frame))
            out.mux(vstream.encode(None))
    return path


def test_wav_stereo_44k_to_mono_16k(tmp_path: Path) -> None:
    path = write_media(tmp_path / "a.wav", "pcm_s16le", 44100, tone(44100, 2.0, 2))
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 32000) <= 1, len(audio)
    # libswresample's s16 down-mix is (L + R) / 2, as upstream's `ffmpeg -ac 1` -> s16le: 0.5 and 0.25 -> 0.375
    peak = np.abs(audio[1000:-1000]).max()
    assert abs(peak - 0.375) < 0.005, peak
    spectrum = np.abs(np.fft.rfft(audio[:16000]))
    assert abs(np.argmax(spectrum) - 440) <= 1  # 1 s at 16 kHz -> 1 Hz bins: still a 440 Hz tone


def test_sample_rate_argument(tmp_path: Path) -> None:
    path = write_media(tmp_path / "a.flac", "flac", 48000, tone(48000, 1.5, 1))
    assert abs(len(load_audio(path, sample_rate=24000)) - 36000) <= 1
    audio = load_audio(path)
    assert abs(len(audio) - 24000) <= 1 and abs(np.abs(audio[1000:-1000]).max() - 0.5) < 0.005


@pytest.mark.parametrize("name,codec", [("a.mp3", "mp3"), ("a.ogg", "libopus"), ("a.m4a", "aac")])
def test_compressed_formats(tmp_path: Path, name: str, codec: str) -> None:
    audio = load_audio(write_media(tmp_path / name, codec, 44100 if codec != "libopus" else 48000,
                                   tone(44100 if codec != "libopus" else 48000, 2.0, 2)))
    # lossy codecs add encoder delay/padding (AAC: 1024+ samples at the source rate), so allow 0.1 s
    assert abs(len(audio) - 32000) < 1600, len(audio)
    assert 0.3 < np.abs(audio[4000:-4000]).max() < 0.45


def test_video_with_audio(tmp_path: Path) -> None:
    path = write_media(tmp_path / "v.mp4", "aac", 44100, tone(44100, 1.0, 2), video_frames=25)
    audio = load_audio(path)
    assert abs(len(audio) - 16000) < 1600 and np.abs(audio[2000:-2000]).max() > 0.3


def _one_line_error(path: Path) -> str:
    with pytest.raises(AudioError) as e:
        load_audio(path)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_video_without_audio(tmp_path: Path) -> None:
    path = write_media(tmp_path / "silent.mp4", None, 0, None, video_frames=10)
    assert "no audio stream" in _one_line_error(path)


def test_missing_and_non_media(tmp_path: Path) -> None:
    assert "not found" in _one_line_error(tmp_path / "missing.wav")
    junk = tmp_path / "notes.wav"
    junk.write_text("this is not audio\n" * 50)
    assert "cannot open" in _one_line_error(junk)
    assert "not found" in _one_line_error(tmp_path)  # a directory is not a file


def test_zero_length(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"  # PyAV writes no header without packets, so use the stdlib writer
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
    assert "no audio samples" in _one_line_error(path)


def damage_packet(path: Path, index: int, out: Path) -> Path:
    """Copy `path` with the sync word of audio packet `index`'s AC-3 frame broken, which the decoder rejects
    ("frame sync error"), as in a real file with one bad frame."""
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(audio=0) if p.size]
        start, size = packets[index].pos, packets[index].size
    data = bytearray(path.read_bytes())
    sync = data.index(b"\x0b\x77", start, start + size + 64)
    data[sync : sync + 2] = b"\x00\x00"
    out.write_bytes(bytes(data))
    return out


def test_a_damaged_packet_becomes_silence_of_its_length(tmp_path: Path) -> None:
    """One bad AC-3 frame of 94: the rest decodes, in place (same length, same samples before and after it)."""
    good = write_media(tmp_path / "good.mka", "ac3", 48000, tone(48000, 3.0, 2))
    bad = damage_packet(good, 40, tmp_path / "bad.mka")
    with pytest.raises(av.error.InvalidDataError):  # what made the whole file unusable before
        with av.open(str(bad)) as container:
            for _ in container.decode(audio=0):
                pass
    clean, damaged = read_audio(good), read_audio(bad)
    assert damaged.damaged_packets == 1 and damaged.seconds_lost == pytest.approx(0.032)
    assert damaged.describe_damage() == "1 damaged audio packet(s) skipped (0.03 s replaced by silence)"
    assert clean.damaged_packets == 0 and clean.describe_damage() == ""
    assert damaged.samples.size == clean.samples.size
    hole = slice(38 * 512, 43 * 512)  # packet 40 at 16 kHz (512 samples per AC-3 frame), plus decoder overlap
    before, after = slice(0, hole.start), slice(hole.stop, None)
    np.testing.assert_allclose(damaged.samples[before], clean.samples[before], atol=1e-3)
    np.testing.assert_allclose(damaged.samples[after], clean.samples[after], atol=2e-2)
    assert np.sum(np.abs(damaged.samples[hole]) < 1e-3) >= 400  # one frame of silence where it was (a tone elsewhere)


def test_every_packet_damaged_is_an_error(tmp_path: Path) -> None:
    good = write_media(tmp_path / "good.mka", "ac3", 48000, tone(48000, 0.2, 1))
    bad = tmp_path / "bad.mka"
    bad.write_bytes(good.read_bytes())
    with av.open(str(good)) as container:
        count = sum(1 for p in container.demux(audio=0) if p.size)
    for i in range(count):
        damage_packet(bad, i, bad)
    with pytest.raises(AudioError, match=f"all {count} packets are damaged"):
        load_audio(bad)
