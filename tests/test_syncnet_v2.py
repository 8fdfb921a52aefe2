"""SyncNet v2: the published `syncnet_v2.model` layout, strict loading, input formats and windowing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from latentsync.errors import CheckpointError
from latentsync.models.syncnet_v2 import SyncNetV2, embed_audio, embed_video, load_syncnet_v2, mfcc

# joonson/syncnet_python SyncNetModel.S, written out: (module, kind, weight shape). Indices skip the ReLU / MaxPool
# entries of each nn.Sequential, which hold no tensors.
FC = [("0", "linear", [512, 512]), ("1", "bn", [512]), ("3", "linear", [1024, 512])]
ORIGINAL_LAYERS = [
    ("netcnnaud.0", "conv", [64, 1, 3, 3]), ("netcnnaud.1", "bn", [64]),
    ("netcnnaud.4", "conv", [192, 64, 3, 3]), ("netcnnaud.5", "bn", [192]),
    ("netcnnaud.8", "conv", [384, 192, 3, 3]), ("netcnnaud.9", "bn", [384]),
    ("netcnnaud.11", "conv", [256, 384, 3, 3]), ("netcnnaud.12", "bn", [256]),
    ("netcnnaud.14", "conv", [256, 256, 3, 3]), ("netcnnaud.15", "bn", [256]),
    ("netcnnaud.18", "conv", [512, 256, 5, 4]), ("netcnnaud.19", "bn", [512]),
    *[(f"netfcaud.{i}", kind, shape) for i, kind, shape in FC],
    *[(f"netfclip.{i}", kind, shape) for i, kind, shape in FC],
    ("netcnnlip.0", "conv", [96, 3, 5, 7, 7]), ("netcnnlip.1", "bn", [96]),
    ("netcnnlip.4", "conv", [256, 96, 1, 5, 5]), ("netcnnlip.5", "bn", [256]),
    ("netcnnlip.8", "conv", [256, 256, 1, 3, 3]), ("netcnnlip.9", "bn", [256]),
    ("netcnnlip.11", "conv", [256, 256, 1, 3, 3]), ("netcnnlip.12", "bn", [256]),
    ("netcnnlip.14", "conv", [256, 256, 1, 3, 3]), ("netcnnlip.15", "bn", [256]),
    ("netcnnlip.18", "conv", [512, 256, 1, 6, 6]), ("netcnnlip.19", "bn", [512]),
]


def _expected_state() -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for name, kind, shape in ORIGINAL_LAYERS:
        if kind == "bn":
            for suffix in ("weight", "bias", "running_mean", "running_var"):
                out[f"{name}.{suffix}"] = shape
            out[f"{name}.num_batches_tracked"] = []
        else:
            out[f"{name}.weight"], out[f"{name}.bias"] = shape, shape[:1]
    return out


@pytest.fixture(scope="module")
def net() -> SyncNetV2:
    torch.manual_seed(0)
    model = SyncNetV2()
    for m in model.modules():  # non-trivial running statistics, so a load that skips them is caught
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.num_batches_tracked.fill_(7)
    return model.eval()


def test_layout_matches_original_state_dict():
    with torch.device("meta"):
        model = SyncNetV2()
    state = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert state == _expected_state()
    assert list(state) == list(_expected_state())  # the original's order: aud, fcaud, fclip, lip
    # 13.6 M float32 parameters: the 54.6 MB of the published file.
    assert sum(p.numel() for p in model.parameters()) == 13_631_616


def test_forward_shapes_and_trunk_collapses_to_one_position(net: SyncNetV2):
    frames = torch.rand(2, 3, 5, 224, 224) * 255
    mfccs = torch.randn(2, 1, 13, 20)
    with torch.no_grad():
        assert net.netcnnlip(frames).shape == (2, 512, 1, 1, 1)
        assert net.netcnnaud(mfccs).shape == (2, 512, 1, 1)
        lip, aud = net.forward_lip(frames), net.forward_aud(mfccs)
    assert lip.shape == aud.shape == (2, 1024)
    assert torch.isfinite(lip).all() and torch.isfinite(aud).all()


@pytest.mark.parametrize("variant", ["published", "no_batch_counters", "instance_prefix"])
def test_original_format_loads_strictly(net: SyncNetV2, tmp_path, variant: str):
    state = net.state_dict()
    if variant == "no_batch_counters":  # files written before PyTorch 0.4.1
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    if variant == "instance_prefix":  # a SyncNetInstance.state_dict()
        state = {f"__S__.{k}": v for k, v in state.items()}
    path = tmp_path / "syncnet_v2.model"
    torch.save(state, path)  # the original's format: a bare state dict
    loaded = load_syncnet_v2(path)
    assert not loaded.training
    for key, value in net.state_dict().items():
        if variant == "no_batch_counters" and key.endswith("num_batches_tracked"):
            assert int(loaded.state_dict()[key]) == 0
        else:
            assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(3, 1, 13, 20)
    with torch.no_grad():
        assert torch.allclose(loaded.forward_aud(x), net.forward_aud(x), atol=1e-6)


@pytest.mark.parametrize("defect", ["renamed", "reshaped", "missing"])
def test_mismatching_file_is_one_line_checkpoint_error(net: SyncNetV2, tmp_path, defect: str):
    state = dict(net.state_dict())
    if defect == "renamed":
        state["netcnnaud.0.weights"] = state.pop("netcnnaud.0.weight")
    elif defect == "reshaped":
        state["netfclip.3.weight"] = torch.zeros(512, 512)
    else:
        del state["netcnnlip.18.bias"]
    path = tmp_path / "bad.model"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_syncnet_v2(path)
    named = {"renamed": "netcnnaud.0.weight", "reshaped": "netfclip.3.weight", "missing": "netcnnlip.18.bias"}[defect]
    assert "\n" not in str(err.value) and named in str(err.value)


def test_missing_file_is_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_syncnet_v2(tmp_path / "syncnet_v2.model")


def test_mfcc_is_100_hz_at_int16_scale():
    rng = np.random.default_rng(0)
    samples = rng.integers(-8000, 8000, 16000 + 123).astype(np.int16)
    feats = mfcc(samples)
    assert feats.shape == (13, 1 + math.ceil((len(samples) - 400) / 160)) == (13, 100)
    # Float audio as `audio.load` returns it (int16 / 32768) is scored exactly like the int16 wav the original reads.
    np.testing.assert_array_equal(mfcc(samples.astype(np.float32) / 32768.0), feats)
    # The scale matters: c0 is the log frame energy.
    assert not np.allclose(mfcc(samples.astype(np.float32) / 32768.0 * 0.5)[0], feats[0])


class _Recorder(nn.Module):
    """Stands in for SyncNetV2 and keeps what it was fed."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.lip_inputs: list[torch.Tensor] = []
        self.aud_inputs: list[torch.Tensor] = []

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        self.lip_inputs.append(x)
        return x[:, 1, :, 0, 0]  # the green value of each frame: which frame it was

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        self.aud_inputs.append(x)
        return x[:, 0, 0, :]


def test_video_windows_are_bgr_0_255_and_consecutive():
    n = 12
    crops = np.zeros((n, 224, 224, 3), np.uint8)
    crops[..., 0] = 200  # red
    crops[..., 1] = np.arange(n, dtype=np.uint8)[:, None, None]  # green carries the frame index
    rec = _Recorder()
    emb = embed_video(rec, crops, count=7, batch=3)  # type: ignore[arg-type]
    assert [x.shape[0] for x in rec.lip_inputs] == [3, 3, 1]
    x = torch.cat(rec.lip_inputs)
    assert x.shape == (7, 3, 5, 224, 224) and x.dtype == torch.float32
    assert torch.all(x[:, 0] == 0) and torch.all(x[:, 2] == 200)  # channel 0 is blue: BGR, unnormalised
    np.testing.assert_array_equal(emb.numpy(), np.arange(7)[:, None] + np.arange(5))
    with pytest.raises(ValueError):
        embed_video(rec, crops, count=9)  # type: ignore[arg-type]


def test_audio_windows_move_four_mfcc_steps_per_frame():
    feats = np.arange(13 * 60, dtype=np.float32).reshape(13, 60)
    rec = _Recorder()
    emb = embed_audio(rec, feats, count=11, batch=4)  # type: ignore[arg-type]
    x = torch.cat(rec.aud_inputs)
    assert x.shape == (11, 1, 13, 20)
    for i in range(11):
        np.testing.assert_array_equal(x[i, 0].numpy(), feats[:, 4 * i : 4 * i + 20])
    assert emb.shape == (11, 20)
    with pytest.raises(ValueError):
        embed_audio(rec, feats, count=12)  # type: ignore[arg-type]  # needs 64 steps
