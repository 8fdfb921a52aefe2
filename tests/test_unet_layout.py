"""The U-Net builds exactly upstream's parameter layout for every upstream config, and the configs parse as upstream's.

The full-size models are built on the meta device (no memory, no init cost): names, shapes and order are what
checkpoint compatibility depends on, and a meta forward checks the shapes flow through.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from latentsync.errors import ConfigError
from latentsync.models.unet import UNet3DConditionModel, UNetConfig, load_unet_yaml, unet_presets

MANIFESTS = ["stage1", "stage1_512", "stage2", "stage2_512", "stage2_efficient"]


def _manifest(reference_dir: Path, name: str) -> dict:
    return json.loads((reference_dir / f"unet-{name}.layout.json").read_text())


def _assert_same_list(ours: list, theirs: list, what: str) -> None:
    if ours == theirs:
        return
    missing = [x for x in theirs if x not in ours][:5]
    extra = [x for x in ours if x not in theirs][:5]
    first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    raise AssertionError(
        f"{what}: {len(ours)} vs {len(theirs)} entries; missing {missing}; unexpected {extra}; "
        f"first difference at index {first}"
    )


@pytest.mark.parametrize("name", MANIFESTS)
def test_layout_matches_manifest(reference_dir: Path, name: str) -> None:
    manifest = _manifest(reference_dir, name)
    cfg = UNetConfig.from_dict(manifest["config"]["model"])
    assert cfg.to_dict() == manifest["resolved_model_config"]
    with torch.device("meta"):
        model = UNet3DConditionModel(cfg)

    params = [[k, list(p.shape)] for k, p in model.named_parameters()]
    _assert_same_list(params, [[k, v] for k, v in manifest["params"].items()], "named_parameters")
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"]

    state = model.state_dict()
    _assert_same_list(list(state), manifest["state_dict_keys"], "state_dict keys")
    persistent = [k for k in state if k not in manifest["params"]]
    assert persistent == manifest["persistent_buffers"]
    assert all(list(state[k].shape) == manifest["buffers"][k] for k in persistent)
    assert [k for k, _ in model.named_buffers()] == manifest["persistent_buffers"] + manifest["non_persistent_buffers"]

    io = manifest["io_shapes"]
    with torch.device("meta"):
        out = model(
            torch.empty(io["sample"]),
            torch.zeros(io["timestep"], dtype=torch.long),
            torch.empty(io["encoder_hidden_states"]),
        )
    assert list(out.shape) == io["output"]


def test_any_latent_size_and_at_most_24_frames() -> None:
    with torch.device("meta"):
        model = UNet3DConditionModel(UNetConfig())
        # 36 is not divisible by 8: each upsampler then matches its skip connection's size (36 -> 18 -> 9 -> 5).
        out = model(torch.empty(1, 13, 16, 36, 20), torch.tensor(1), torch.empty(1, 16, 50, 384))
        assert out.shape == (1, 4, 16, 36, 20)
        with pytest.raises(ValueError, match="at most 24 frames"):
            model(torch.empty(1, 13, 25, 8, 8), torch.tensor(1), torch.empty(1, 25, 50, 384))
        with pytest.raises(ValueError, match="encoder_hidden_states"):
            model(torch.empty(2, 13, 16, 8, 8), torch.tensor(1), torch.empty(16, 50, 384))


@pytest.mark.parametrize("name", MANIFESTS)
def test_preset_yaml_is_upstream_config(reference_dir: Path, name: str) -> None:
    config = _manifest(reference_dir, name)["config"]
    data = {k: v for k, v in config["data"].items() if k != "mask_image_path"}
    assert load_unet_yaml(name) == {"model": config["model"], "data": data, "run": config["run"]}


def test_omitted_keys_resolve_as_upstream_stage2_512(reference_dir: Path) -> None:
    resolved = _manifest(reference_dir, "stage2_512")["resolved_model_config"]
    assert UNetConfig().to_dict() == resolved
    assert UNetConfig.from_dict({}).to_dict() == resolved
    # The keys LatentSync's yamls omit get upstream's constructor defaults.
    stage2 = load_unet_yaml("stage2")["model"]
    assert UNetConfig.from_dict(stage2).to_dict() == _manifest(reference_dir, "stage2")["resolved_model_config"]


@pytest.mark.parametrize(
    "model, message",
    [
        ({"block_out_chanels": [32]}, "unknown key(s) block_out_chanels"),
        ({"motion_module_kwargs": {"heads": 8}}, "motion_module_kwargs: unknown key(s) heads"),
        ({"layers_per_block": "two"}, "bad value for layers_per_block"),
        ({"layers_per_block": 1.5}, "bad value for layers_per_block"),
        ({"use_motion_module": 1}, "bad value for use_motion_module"),
        ({"use_linear_projection": True}, "use_linear_projection=True is not supported"),
        ({"down_block_types": ["CrossAttnDownBlock2D"] * 4}, "unknown down_block_types"),
        ({"block_out_channels": [320, 640]}, "need the same non-zero length"),
        ({"block_out_channels": [48, 64, 128, 128]}, "must be divisible"),
        ({"motion_module_kwargs": {"attention_block_types": ["Temporal_Cross"]}}, "only 'Temporal_Self'"),
    ],
)
def test_bad_config_is_one_line_config_error(model: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        UNetConfig.from_dict(model)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_load_unet_yaml_names_presets_when_missing(tmp_path: Path) -> None:
    assert set(unet_presets()) >= {"stage1", "stage2", "stage2_efficient", "stage1_512", "stage2_512", "small"}
    with pytest.raises(ConfigError, match="presets: .*stage2_512"):
        load_unet_yaml("stage3")
    with pytest.raises(ConfigError, match="not found"):
        load_unet_yaml(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_unet_yaml(tmp_path / "bad.yaml")
    # Upstream yamls write `1e-05`, which plain YAML 1.1 reads as a string (OmegaConf, as upstream, as a float).
    (tmp_path / "own.yaml").write_text("model:\n  layers_per_block: 1\n  norm_eps: 1e-05\n")
    assert load_unet_yaml(tmp_path / "own.yaml") == {"model": {"layers_per_block": 1, "norm_eps": 1e-5}}


def test_small_preset_runs_on_whisper_tiny_features() -> None:
    data = load_unet_yaml("small")
    cfg = UNetConfig.from_dict(data["model"])
    assert cfg.block_out_channels == (32, 64, 128, 128) and cfg.layers_per_block == 1
    assert cfg.cross_attention_dim == 384 and cfg.norm_num_groups == 32
    assert cfg.use_motion_module and not cfg.motion_module_decoder_only
    assert data["data"]["resolution"] == 128 and data["data"]["num_frames"] == 16
    assert data["run"]["guidance_scale"] == 1.5 and data["run"]["inference_steps"] == 20

    torch.manual_seed(0)
    model = UNet3DConditionModel.from_config_file("small").eval()
    assert all(len(b.motion_modules) == 1 for b in model.down_blocks)
    latent = data["data"]["resolution"] // 8
    with torch.no_grad():
        out = model(torch.randn(1, 13, 4, latent, latent), torch.tensor(500), torch.randn(1, 4, 50, 384))
    assert out.shape == (1, 4, 4, latent, latent)
