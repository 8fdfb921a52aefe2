"""The Whisper encoder, its loader, the log-mel front end, and the CTranslate2 -> OpenAI conversion of tiny.en.

The conversion is checked structurally (every OpenAI key, shapes, dtype, the sinusoidal position table) and
end to end: a greedy decode with the converted decoder must transcribe TTS speech, which only works if every
fused q/k/v slice landed in the right place.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import librosa
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from latentsync.audio.features import audio_features
from latentsync.errors import CheckpointError
from latentsync.models.whisper import AudioEncoder, WhisperDims, load_whisper_encoder, log_mel_spectrogram, sinusoids
from latentsync.models.whisper_ct2 import ct2_tiny_en_source, convert_ct2_whisper, read_ct2_model, tiny_en_path

SENTENCE_A = "The quick brown fox jumps over the lazy dog near the river bank."
SENTENCE_B = "Please remember to bring your umbrella because it might rain later today."
EOT, SOT, NO_TIMESTAMPS = 50256, 50257, 50362  # tiny.en special tokens


@pytest.fixture(scope="session")
def tiny_en() -> Path:
    torch.set_num_threads(2)
    return tiny_en_path()


@pytest.fixture(scope="session")
def checkpoint(tiny_en: Path) -> dict:
    return torch.load(tiny_en, weights_only=True)


@pytest.fixture(scope="session")
def encoder(tiny_en: Path) -> AudioEncoder:
    return load_whisper_encoder(tiny_en)


@pytest.fixture(scope="session")
def speak():
    """text, seed -> 16 kHz float32 speech (hibari renders 24 kHz; 2/3 polyphase resampling)."""
    from hibari import Hibari
    from scipy.signal import resample_poly

    tts = Hibari()
    return lambda text, seed=0: resample_poly(tts(text, seed=seed), 2, 3).astype(np.float32)


def reference_sinusoids(length: int, channels: int) -> np.ndarray:
    """OpenAI's formula, independently in float64: [sin | cos], timescales 10000^(j / (C/2 - 1))."""
    half = channels // 2
    inv = np.exp(-np.log(10000.0) / (half - 1) * np.arange(half))
    scaled = np.arange(length)[:, None] * inv[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1)


def openai_shapes(d: WhisperDims) -> dict[str, tuple[int, ...]]:
    """Every tensor of OpenAI's Whisper state_dict and its shape, enumerated from the published architecture."""
    shapes: dict[str, tuple[int, ...]] = {}

    def block(prefix: str, n: int, cross: bool) -> None:
        for attn in ("attn", "cross_attn") if cross else ("attn",):
            for proj in ("query", "key", "value", "out"):
                shapes[f"{prefix}.{attn}.{proj}.weight"] = (n, n)
                if proj != "key":
                    shapes[f"{prefix}.{attn}.{proj}.bias"] = (n,)
            shapes[f"{prefix}.{attn}_ln.weight"] = shapes[f"{prefix}.{attn}_ln.bias"] = (n,)
        shapes.update({f"{prefix}.mlp.0.weight": (4 * n, n), f"{prefix}.mlp.0.bias": (4 * n,),
                       f"{prefix}.mlp.2.weight": (n, 4 * n), f"{prefix}.mlp.2.bias": (n,),
                       f"{prefix}.mlp_ln.weight": (n,), f"{prefix}.mlp_ln.bias": (n,)})

    a, t = d.n_audio_state, d.n_text_state
    shapes.update({"encoder.conv1.weight": (a, d.n_mels, 3), "encoder.conv1.bias": (a,),
                   "encoder.conv2.weight": (a, a, 3), "encoder.conv2.bias": (a,),
                   "encoder.positional_embedding": (d.n_audio_ctx, a),
                   "encoder.ln_post.weight": (a,), "encoder.ln_post.bias": (a,)})
    for i in range(d.n_audio_layer):
        block(f"encoder.blocks.{i}", a, cross=False)
    shapes.update({"decoder.token_embedding.weight": (d.n_vocab, t), "decoder.positional_embedding": (d.n_text_ctx, t),
                   "decoder.ln.weight": (t,), "decoder.ln.bias": (t,)})
    for i in range(d.n_text_layer):
        block(f"decoder.blocks.{i}", t, cross=True)
    return shapes


def test_conversion_complete_and_cached_copy_matches(checkpoint: dict) -> None:
    fresh = convert_ct2_whisper(ct2_tiny_en_source())
    dims = WhisperDims.from_dict(fresh["dims"])
    assert dims == WhisperDims(80, 1500, 384, 6, 4, 51864, 448, 384, 6, 4)  # OpenAI's published tiny.en dims
    expected = openai_shapes(dims)
    state = fresh["model_state_dict"]
    assert sorted(state) == sorted(expected), set(state) ^ set(expected)
    assert len(state) == 167
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
        assert state[key].dtype == torch.float16, key
        assert torch.isfinite(state[key]).all(), key
    enc_keys = {f"encoder.{k}": tuple(v.shape) for k, v in AudioEncoder(dims).state_dict().items()}
    assert enc_keys == {k: v for k, v in expected.items() if k.startswith("encoder.")}
    # the cached file (possibly from an earlier run) is exactly this conversion
    assert checkpoint["dims"] == fresh["dims"]
    for key, value in state.items():
        assert torch.equal(checkpoint["model_state_dict"][key], value), key


def test_ct2_reader_rejects_truncated_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.bin"
    bad.write_bytes(ct2_tiny_en_source().read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated"):
        read_ct2_model(bad)


def test_positional_embedding_is_openai_sinusoid(checkpoint: dict) -> None:
    ref = reference_sinusoids(1500, 384)
    stored = checkpoint["model_state_dict"]["encoder.positional_embedding"].double().numpy()
    err = np.abs(stored - ref).max()
    assert err < 1e-3, f"converted positional embedding differs from the sinusoid formula by {err:.2e} (fp16 storage)"
    ours = np.abs(sinusoids(1500, 384).double().numpy() - ref).max()
    assert ours < 1e-6, f"sinusoids() differs from the formula by {ours:.2e}"


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_loader_errors(tmp_path: Path, checkpoint: dict) -> None:
    with pytest.raises(CheckpointError) as e:
        load_whisper_encoder(tmp_path / "nope.pt")
    assert "not found" in _one_line(e)

    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"conv_in.weight": torch.zeros(2)}, "global_step": 3}, foreign)
    with pytest.raises(CheckpointError) as e:
        load_whisper_encoder(foreign)
    assert "not an OpenAI Whisper checkpoint" in _one_line(e)

    truncated = tmp_path / "truncated.pt"
    encoder_only = {k: v for k, v in checkpoint["model_state_dict"].items() if k.startswith("encoder.")}
    torch.save({"dims": checkpoint["dims"], "model_state_dict": encoder_only}, truncated)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    with pytest.raises(CheckpointError) as e:
        load_whisper_encoder(truncated)
    assert "cannot read" in _one_line(e)

    missing = tmp_path / "missing.pt"
    torch.save({"dims": checkpoint["dims"], "model_state_dict": {k: v for k, v in encoder_only.items()
                                                                   if k != "encoder.blocks.2.mlp.0.bias"}}, missing)
    with pytest.raises(CheckpointError) as e:
        load_whisper_encoder(missing)
    assert "missing 1 encoder keys (e.g. encoder.blocks.2.mlp.0.bias)" in _one_line(e)

    wrong = tmp_path / "wrong_shape.pt"
    bad_conv = {**encoder_only, "encoder.conv2.weight": torch.zeros(384, 384, 5)}
    torch.save({"dims": checkpoint["dims"], "model_state_dict": bad_conv}, wrong)
    with pytest.raises(CheckpointError) as e:
        load_whisper_encoder(wrong)
    assert "encoder.conv2.weight has shape [384, 384, 5]" in _one_line(e)

    no_dims = tmp_path / "no_dims.pt"
    torch.save({"dims": {"n_mels": 80}, "model_state_dict": encoder_only}, no_dims)
    with pytest.raises(CheckpointError) as e:
        load_whisper_encoder(no_dims)
    assert "'dims'" in _one_line(e)


def test_loads_full_model_file_ignoring_decoder(encoder: AudioEncoder, checkpoint: dict) -> None:
    assert encoder.dims.n_audio_layer == 4 and not encoder.training
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, checkpoint["model_state_dict"][f"encoder.{key}"].float()), key


@pytest.mark.parametrize("n", [0, 159, 160, 161, 16000, 16000 * 3 + 77])
def test_log_mel_shape(n: int) -> None:
    mel = log_mel_spectrogram(np.random.default_rng(n).standard_normal(n).astype(np.float32) * 0.1)
    assert mel.shape == (80, n // 160) and mel.dtype == torch.float32


def test_log_mel_matches_librosa(speak) -> None:
    audio = speak("Hello there.")
    power = np.abs(librosa.stft(audio, n_fft=400, hop_length=160, window="hann", center=True, pad_mode="reflect")) ** 2
    mel = librosa.filters.mel(sr=16000, n_fft=400, n_mels=80) @ power[:, :-1]
    log_spec = np.log10(np.maximum(mel, 1e-10))
    ref = (np.maximum(log_spec, log_spec.max() - 8.0) + 4.0) / 4.0
    err = np.abs(log_mel_spectrogram(audio).numpy() - ref).max()
    assert err < 1e-4, f"log-mel differs from the librosa reference by {err:.2e}"


def _relative(x: torch.Tensor, y: torch.Tensor) -> float:
    n = min(len(x), len(y))
    return float((x[:n] - y[:n]).norm() / x[:n].norm())


def test_real_speech_features(encoder: AudioEncoder, speak) -> None:
    a, a_again, b = speak(SENTENCE_A), speak(SENTENCE_A, seed=1), speak(SENTENCE_B)
    fa, fa2, fb = (audio_features(x, encoder) for x in (a, a_again, b))
    assert fa.shape == (len(a) // 320, 5, 384)
    same, diff = _relative(fa, fa2), _relative(fa, fb)
    last_diff = _relative(fa[:, 4], fb[:, 4])
    # measured: same sentence (TTS seed 0 vs 1) 0.0018; different sentences 0.94 (last layer 0.98)
    assert same < 0.02, f"same sentence rendered twice: relative feature difference {same:.4f}"
    assert diff > 0.5 and last_diff > 0.5, f"different sentences: relative difference {diff:.3f} (last {last_diff:.3f})"


def _greedy_transcript(states: torch.Tensor, checkpoint: dict, encoder: AudioEncoder, steps: int = 40) -> str:
    """A minimal Whisper decoder over the converted tensors: no cache, argmax, stop at end-of-text."""
    sd = {k: v.float() for k, v in checkpoint["model_state_dict"].items() if k.startswith("decoder.")}
    audio = encoder.final(states)
    heads = checkpoint["dims"]["n_text_head"]

    def lin(x: torch.Tensor, p: str) -> torch.Tensor:
        return F.linear(x, sd[f"{p}.weight"], sd.get(f"{p}.bias"))

    def ln(x: torch.Tensor, p: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], sd[f"{p}.weight"], sd[f"{p}.bias"])

    def attention(x: torch.Tensor, kv: torch.Tensor, p: str, causal: bool) -> torch.Tensor:
        def split(z: torch.Tensor) -> torch.Tensor:
            return z.view(z.shape[0], z.shape[1], heads, -1).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(lin(x, f"{p}.query")), split(lin(kv, f"{p}.key")),
                                           split(lin(kv, f"{p}.value")), is_causal=causal)
        return lin(y.transpose(1, 2).flatten(2), f"{p}.out")

    tokens = [SOT, NO_TIMESTAMPS]
    for _ in range(steps):
        x = sd["decoder.token_embedding.weight"][tokens][None] + sd["decoder.positional_embedding"][: len(tokens)]
        for i in range(checkpoint["dims"]["n_text_layer"]):
            p = f"decoder.blocks.{i}"
            h = ln(x, f"{p}.attn_ln")
            x = x + attention(h, h, f"{p}.attn", causal=True)
            x = x + attention(ln(x, f"{p}.cross_attn_ln"), audio, f"{p}.cross_attn", causal=False)
            x = x + lin(F.gelu(lin(ln(x, f"{p}.mlp_ln"), f"{p}.mlp.0")), f"{p}.mlp.2")
        nxt = int((ln(x, "decoder.ln")[0, -1] @ sd["decoder.token_embedding.weight"].T).argmax())
        if nxt == EOT:
            break
        tokens.append(nxt)
    vocab = (ct2_tiny_en_source().parent / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    return "".join(vocab[t] for t in tokens[2:]).replace("\u0120", " ").strip()


def test_encoder_output_transcribes(encoder: AudioEncoder, checkpoint: dict, speak) -> None:
    audio = speak(SENTENCE_A)
    mel = F.pad(log_mel_spectrogram(audio), (0, 3000 - len(audio) // 160))
    with torch.no_grad():
        states = encoder(mel[None])
        final = encoder.final(states)
        assert states.shape == (1, 1500, 5, 384)
        assert torch.isfinite(final).all()
        time_std = float(final[0, : len(audio) // 320].std(dim=0).mean())
        assert time_std > 0.2, f"ln_post output barely varies over time (mean std {time_std:.3f})"
        text = _greedy_transcript(states, checkpoint, encoder)

    def letters(s: str) -> str:
        return re.sub(r"[^a-z]", "", s.lower())

    # measured: "The quick brown fox jumps over the lazy dog near the riverbank." (letters identical)
    ratio = difflib.SequenceMatcher(None, letters(text), letters(SENTENCE_A)).ratio()
    assert ratio > 0.9, f"greedy transcript {text!r} matches the spoken sentence at {ratio:.2f}"
