"""StableSyncNet against upstream: layouts of all four configs, numeric parity on syncnet-small, loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentsync.errors import CheckpointError, ConfigError
from latentsync.models.checkpoint import save_checkpoint
from latentsync.models.syncnet import (
    StableSyncNet,
    SyncNetConfig,
    load_syncnet,
    load_syncnet_yaml,
    sync_loss,
    sync_probability,
    visual_input,
)

MANIFESTS = ["syncnet_16_latent", "syncnet_16_pixel", "syncnet_16_pixel_attn", "syncnet_25_pixel"]
TOL = 1e-5


def _manifest(reference_dir: Path, name: str) -> dict:
    return json.loads((reference_dir / f"syncnet-{name}.layout.json").read_text())


@pytest.fixture(scope="module")
def small(reference_dir: Path) -> dict:
    config = json.loads((reference_dir / "syncnet-small.config.json").read_text())
    return {
        "config": config,
        "weights": load_file(str(reference_dir / "syncnet-small.weights.safetensors")),
        "io": load_file(str(reference_dir / "syncnet-small.io.safetensors")),
    }


@pytest.fixture(scope="module")
def small_model(small: dict) -> StableSyncNet:
    model = StableSyncNet(small["config"]["model"])
    model.load_state_dict(small["weights"], strict=True)
    return model.eval()


@pytest.mark.parametrize("name", MANIFESTS)
def test_layout_matches_manifest(reference_dir: Path, name: str):
    manifest = _manifest(reference_dir, name)
    with torch.device("meta"):
        model = StableSyncNet(manifest["config"]["model"])
    params = {k: list(p.shape) for k, p in model.named_parameters()}
    assert list(params) == list(manifest["params"])  # names and upstream order
    assert params == manifest["params"]
    assert [k for k, _ in model.named_buffers()] == list(manifest["persistent_buffers"]) == []
    assert list(model.state_dict()) == manifest["state_dict_keys"]
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"]
    assert len(model.state_dict()) == manifest["num_state_dict_entries"]


@pytest.mark.parametrize("name", MANIFESTS)
def test_meta_forward_shapes(reference_dir: Path, name: str):
    io = _manifest(reference_dir, name)["io_shapes"]
    with torch.device("meta"):
        model = StableSyncNet(_manifest(reference_dir, name)["config"]["model"])
        visual = torch.empty(io["visual_input"])
        mel = torch.empty(io["mel"])
        assert list(model.visual_encoder(visual).shape) == io["visual_encoder_raw_output"]
        assert list(model.audio_encoder(mel).shape) == io["audio_encoder_raw_output"]
        vision, audio = model(visual, mel)
    assert list(vision.shape) == io["vision_embeds"]
    assert list(audio.shape) == io["audio_embeds"]


def test_packaged_yamls_reproduce_manifest_configs(reference_dir: Path):
    for name in MANIFESTS:
        assert load_syncnet_yaml(name) == _manifest(reference_dir, name)["config"], name


def test_missing_attn_blocks_means_no_attention(reference_dir: Path):
    model_cfg = _manifest(reference_dir, "syncnet_25_pixel")["config"]["model"]
    assert "attn_blocks" not in model_cfg["audio_encoder"]
    config = SyncNetConfig.from_dict(model_cfg)
    assert config.audio_encoder.attn_blocks == (0,) * 6
    assert config.visual_encoder.attn_blocks == (0,) * 8


def test_numeric_parity_small(small: dict, small_model: StableSyncNet):
    io = small["io"]
    with torch.no_grad():
        vision, audio = small_model(io["visual_input"], io["mel"])
    err_v = (vision - io["vision_embeds"]).abs().max().item()
    err_a = (audio - io["audio_embeds"]).abs().max().item()
    assert err_v <= TOL, f"vision_embeds max abs error {err_v:.3e}"
    assert err_a <= TOL, f"audio_embeds max abs error {err_a:.3e}"
    err_cos = (sync_probability(vision, audio) - io["cosine_similarity"]).abs().max().item()
    assert err_cos <= TOL, f"cosine similarity max abs error {err_cos:.3e}"
    loss = sync_loss(vision, audio, io["y"], reduction="none")
    err_bce = (loss - io["bce_loss"]).abs().max().item()
    assert err_bce <= TOL, f"BCE loss max abs error {err_bce:.3e}"
    mean_err = abs(sync_loss(vision, audio, io["y"]).item() - io["bce_loss"].mean().item())
    assert mean_err <= TOL, f"mean BCE loss abs error {mean_err:.3e}"


def test_visual_input_layout(small: dict):
    io = small["io"]
    assert torch.equal(visual_input(io["frames"]), io["visual_input"])
    assert visual_input(io["frames"], lower_half=False).shape == (2, 48, 32, 32)


def test_save_and_load_roundtrip(tmp_path: Path, small: dict, small_model: StableSyncNet):
    path = save_checkpoint(tmp_path / "stable_syncnet.pt", small_model.state_dict(), global_step=7)
    official = torch.load(path, map_location="cpu", weights_only=True)
    assert set(official) == {"state_dict", "global_step"} and official["global_step"] == 7
    loaded = load_syncnet(small["config"], path)
    assert not loaded.training
    io = small["io"]
    with torch.no_grad():
        expected = small_model(io["visual_input"], io["mel"])
        got = loaded(io["visual_input"], io["mel"])
    for e, g in zip(expected, got):
        assert torch.equal(e, g), f"reload differs by {(e - g).abs().max().item():.3e}"


def test_load_from_yaml_path(tmp_path: Path, small: dict):
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(json.dumps({"model": small["config"]["model"]}))  # JSON is valid YAML
    weights = tmp_path / "w.pt"
    save_checkpoint(weights, small["weights"])
    model = load_syncnet(cfg_path, weights)
    assert sum(p.numel() for p in model.parameters()) == small["config"]["num_params"]


@pytest.mark.parametrize("defect", ["missing", "unexpected", "shape"])
def test_mismatched_weights_raise(tmp_path: Path, small: dict, defect: str):
    state = dict(small["weights"])
    key = "visual_encoder.down_blocks.3.attn.to_q.weight"
    if defect == "missing":
        del state[key]
    elif defect == "unexpected":
        state["visual_encoder.extra.weight"] = torch.zeros(1)
        key = "visual_encoder.extra.weight"
    else:
        state[key] = torch.zeros(3, 3)
    path = save_checkpoint(tmp_path / "bad.pt", state)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")) as info:
        load_syncnet(small["config"], path)
    assert "\n" not in str(info.value)


def test_corrupt_or_absent_file_raises(tmp_path: Path, small: dict):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"\x80\x02not a checkpoint" * 10)
    with pytest.raises(CheckpointError):
        load_syncnet(small["config"], path)
    with pytest.raises(CheckpointError):
        load_syncnet(small["config"], tmp_path / "absent.pt")


def test_unknown_preset_names_presets():
    with pytest.raises(ConfigError, match="syncnet_16_pixel_attn"):
        load_syncnet_yaml("no_such_syncnet")
    with pytest.raises(ConfigError):
        load_syncnet_yaml("/nonexistent/dir/syncnet.yaml")


def test_bad_config_raises():
    with pytest.raises(ConfigError, match="same non-zero length"):
        SyncNetConfig.from_dict(
            {
                "audio_encoder": {"in_channels": 1, "block_out_channels": [32], "downsample_factors": [2, 2]},
                "visual_encoder": {"in_channels": 48, "block_out_channels": [32], "downsample_factors": [2]},
            }
        )
    with pytest.raises(ConfigError, match="visual_encoder"):
        SyncNetConfig.from_dict({"audio_encoder": {}})


def test_small_preset_builds_and_embeds():
    model = StableSyncNet(load_syncnet_yaml("small")).eval()
    visual = visual_input(torch.rand(2, 16, 3, 128, 128) * 2 - 1)
    assert visual.shape == (2, 48, 64, 128)
    mel = torch.rand(2, 1, 80, 52) * 8 - 4
    with torch.no_grad():
        assert model.visual_encoder(visual).shape[-2:] == (1, 1)
        assert model.audio_encoder(mel).shape[-2:] == (1, 1)
        vision, audio = model(visual, mel)
    assert vision.shape == audio.shape == (2, 256)
    torch.testing.assert_close(vision.norm(dim=1), torch.ones(2))
    probability = sync_probability(vision, audio)
    assert ((probability >= 0) & (probability <= 1)).all()


def test_center_frames_sees_motion_not_appearance():
    """`center_frames: true` (ours) subtracts the window's mean frame before the visual encoder: a still image added
    to every frame changes nothing, while the plain (upstream) encoder sees it; the same weights load either way."""
    # 256 channels at 1x1: 8 per GroupNorm group (with 1 per group the norm turns rounding into the output)
    model = {"audio_encoder": {"in_channels": 1, "block_out_channels": [256], "downsample_factors": [[80, 52]]},
             "visual_encoder": {"in_channels": 12, "block_out_channels": [256], "downsample_factors": [[8, 16]]}}
    plain = StableSyncNet(model)
    centred = StableSyncNet({**model, "visual_encoder": {**model["visual_encoder"], "center_frames": True}})
    centred.load_state_dict(plain.state_dict())  # no weights of its own
    gen = torch.Generator().manual_seed(0)
    frames = torch.rand(2, 4, 3, 8, 16, generator=gen)
    still = torch.rand(2, 1, 3, 8, 16, generator=gen)
    mel = torch.rand(2, 1, 80, 52, generator=gen)

    def embed(net, x):
        return net(x.reshape(2, 12, 8, 16), mel)[0]

    assert torch.allclose(embed(centred, frames), embed(centred, frames + still), atol=1e-5)
    assert not torch.allclose(embed(plain, frames), embed(plain, frames + still), atol=1e-3)
    assert SyncNetConfig.from_dict(model).visual_encoder.center_frames is False
    with pytest.raises(ConfigError, match="center_frames needs RGB frames"):
        StableSyncNet({**model, "visual_encoder": {**model["visual_encoder"], "in_channels": 8, "center_frames": 1}})


def test_temporal_embeddings_are_frame_by_frame():
    """`per_frame` (visual) and `time_steps` (audio), ours: the embeddings are time series, [C, 1, frames]
    flattened. Reordering the frames reorders the visual embedding's time steps and nothing else, and the packaged
    `small_temporal` preset yields visual and audio embeddings of the same size for 16 frames at 32 px."""
    encoder = {"in_channels": 12, "block_out_channels": [32, 64], "downsample_factors": [[1, 2], [8, 8]],
               "center_frames": True, "per_frame": True}
    model = StableSyncNet({"audio_encoder": {"in_channels": 1, "block_out_channels": [64],
                                             "downsample_factors": [[80, 1]], "time_steps": 4},
                           "visual_encoder": encoder}).eval()
    gen = torch.Generator().manual_seed(0)
    frames = torch.rand(2, 4, 3, 8, 16, generator=gen)
    order = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        series = model.visual_encoder(frames.reshape(2, 12, 8, 16))
        reordered = model.visual_encoder(frames[:, order].reshape(2, 12, 8, 16))
        audio = model.audio_encoder(torch.rand(2, 1, 80, 52, generator=gen))
    assert series.shape == (2, 64, 1, 4) and audio.shape == (2, 64, 1, 4)
    torch.testing.assert_close(reordered, series[..., order], atol=1e-3, rtol=1e-3)  # 2 channels per norm group
    assert not torch.allclose(series[..., 0], series[..., 1], atol=1e-3)  # the steps differ: each sees its frame

    net = StableSyncNet(load_syncnet_yaml("small_temporal"))
    with torch.no_grad():
        vision, sound = net(visual_input(torch.rand(1, 16, 3, 32, 32) * 2 - 1), torch.rand(1, 1, 80, 52))
    assert vision.shape == sound.shape == (1, 128 * 16)
    with pytest.raises(ConfigError, match="per_frame needs RGB frames"):
        StableSyncNet({"audio_encoder": model.config.audio_encoder.__dict__,
                       "visual_encoder": {**encoder, "in_channels": 8, "center_frames": False}})
