"""U-Net training objective: LPIPS and TREPA models, mixed noise, trainable-parameter rules, the training step."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from latentsync.errors import CheckpointError, ConfigError
from latentsync.face.mask import load_mask
from latentsync.models.scheduler import make_scheduler
from latentsync.models.syncnet import StableSyncNet, load_syncnet_yaml
from latentsync.models.unet import UNet3DConditionModel, load_unet_yaml
from latentsync.models.vae import init_vae
from latentsync.train.losses import LossWeights, mixed_noise, one_step_x0
from latentsync.train.lpips import load_lpips, vgg16_features
from latentsync.train.trepa import ViTDims, VideoMAEv2Features, load_trepa, sinusoid_table, trepa_loss
from latentsync.train.unet_step import UNetTrainStep, trainable_parameters, training_rule

TESTS = Path(__file__).resolve().parent
TINY_VIT = ViTDims(
    img_size=28, patch_size=14, tubelet_size=2, num_frames=16, embed_dim=64, depth=2, num_heads=4, mlp_ratio=4.0
)
RES = 64


def _images(n: int, seed: int, size: tuple[int, int] = (32, 48)) -> torch.Tensor:
    """Smooth random images in [-1, 1] (upsampled noise), more image-like than white noise."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size[0] // 8, size[1] // 8, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(low, size=size, mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------------------------- LPIPS


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised VGG16 saved as torchvision's `vgg16().state_dict()` (with a stand-in classifier)."""
    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in vgg16_features().state_dict().items()}
    state.update({"classifier.0.weight": torch.zeros(8, 4), "classifier.0.bias": torch.zeros(8)})
    path = tmp_path_factory.mktemp("vgg") / "vgg16-random.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def lpips_model(vgg_file: Path):
    return load_lpips(vgg_file)


def test_lpips_loads_torchvision_vgg_and_package_heads(vgg_file: Path, lpips_model) -> None:
    saved = torch.load(vgg_file, weights_only=True)
    conv_indices = sorted({int(k.split(".")[1]) for k in saved if k.startswith("features.")})
    assert conv_indices == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    for k, v in saved.items():
        if k.startswith("features."):
            assert torch.equal(lpips_model.state_dict()[k], v), k
    package = Path(importlib.util.find_spec("lpips").submodule_search_locations[0])
    heads = torch.load(package / "weights" / "v0.1" / "vgg.pth", map_location="cpu", weights_only=True)
    assert sorted(heads) == [f"lin{i}.model.1.weight" for i in range(5)]
    for i, lin in enumerate(lpips_model.lins):
        assert torch.equal(lin.weight, heads[f"lin{i}.model.1.weight"])
    assert not lpips_model.training and not any(p.requires_grad for p in lpips_model.parameters())


def test_lpips_is_a_distance(lpips_model) -> None:
    a, b = _images(3, 1), _images(3, 2)
    assert torch.equal(lpips_model(a, a), torch.zeros(3))
    ab, ba = lpips_model(a, b), lpips_model(b, a)
    torch.testing.assert_close(ab, ba)
    assert (ab > 0).all()
    assert (lpips_model(a, a + 0.05 * torch.randn_like(a)) < ab).all()  # a small perturbation is nearer


# Runs the lpips package's own LPIPS in a child process, with `torchvision.models.vgg16` stubbed by our trunk holding
# the same weights (the package cannot import torchvision here). A stub in this process could confuse diffusers.
_PACKAGE_LPIPS = """
import sys, types, torch
from latentsync.train.lpips import vgg16_features
saved = torch.load(sys.argv[1], weights_only=True)
state = {k[len("features."):]: v for k, v in saved.items() if k.startswith("features.")}
def vgg16(pretrained=False, **kwargs):
    trunk = vgg16_features()
    trunk.load_state_dict(state)
    return types.SimpleNamespace(features=trunk)
models = types.ModuleType("torchvision.models")
models.vgg16 = vgg16
sys.modules["torchvision"] = types.ModuleType("torchvision")
sys.modules["torchvision"].models = sys.modules["torchvision.models"] = models
import lpips
a, b = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    torch.save(lpips.LPIPS(net="vgg", verbose=False).eval()(a, b).flatten(), sys.argv[3])
"""


def test_lpips_matches_the_lpips_package(vgg_file: Path, lpips_model, tmp_path: Path) -> None:
    a = _images(4, 5, (64, 96))
    b = a + 0.2 * torch.randn(a.shape, generator=torch.Generator().manual_seed(6))
    torch.save((a, b), tmp_path / "inputs.pt")
    cmd = [sys.executable, "-c", _PACKAGE_LPIPS, str(vgg_file), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    with torch.no_grad():
        ours = lpips_model(a, b)
    torch.testing.assert_close(ours, torch.load(tmp_path / "out.pt", weights_only=True), atol=1e-6, rtol=1e-5)


def test_lpips_refuses_bad_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_lpips(tmp_path / "missing.pth")
    wrong = tmp_path / "resnet.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 7, 7)}, wrong)
    with pytest.raises(CheckpointError, match="not a torchvision vgg16") as info:
        load_lpips(wrong)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------- TREPA


def _official_videomae_state(dims: ViTDims, seed: int) -> dict[str, torch.Tensor]:
    """Random tensors under the key names and shapes of `vit_g_hybrid_pt_1200e_ssv2_ft.pth` (written out here
    from the official layout, not taken from our module), including the 174-class head."""
    g = torch.Generator().manual_seed(seed)
    d, hidden, p, t = dims.embed_dim, dims.mlp_hidden, dims.patch_size, dims.tubelet_size
    shapes = {"patch_embed.proj.weight": [d, 3, t, p, p], "patch_embed.proj.bias": [d]}
    for i in range(dims.depth):
        shapes.update({
            f"blocks.{i}.norm1.weight": [d], f"blocks.{i}.norm1.bias": [d],
            f"blocks.{i}.attn.q_bias": [d], f"blocks.{i}.attn.v_bias": [d],
            f"blocks.{i}.attn.qkv.weight": [3 * d, d],
            f"blocks.{i}.attn.proj.weight": [d, d], f"blocks.{i}.attn.proj.bias": [d],
            f"blocks.{i}.norm2.weight": [d], f"blocks.{i}.norm2.bias": [d],
            f"blocks.{i}.mlp.fc1.weight": [hidden, d], f"blocks.{i}.mlp.fc1.bias": [hidden],
            f"blocks.{i}.mlp.fc2.weight": [d, hidden], f"blocks.{i}.mlp.fc2.bias": [d],
        })
    shapes.update({"fc_norm.weight": [d], "fc_norm.bias": [d], "head.weight": [174, d], "head.bias": [174]})
    scale = {k: 0.1 if len(s) == 1 else 1 / math.sqrt(math.prod(s[1:])) for k, s in shapes.items()}
    return {k: torch.randn(s, generator=g) * scale[k] for k, s in shapes.items()}


@pytest.fixture(scope="module")
def tiny_trepa(tmp_path_factory: pytest.TempPathFactory) -> VideoMAEv2Features:
    path = tmp_path_factory.mktemp("trepa") / "vit_tiny_ssv2_ft.pth"
    torch.save({"module": _official_videomae_state(TINY_VIT, 0)}, path)
    return load_trepa(path, TINY_VIT)


def test_trepa_loads_official_layout(tmp_path: Path) -> None:
    state = _official_videomae_state(TINY_VIT, 1)
    torch.save({"model": state}, tmp_path / "ft.pth")
    model = load_trepa(tmp_path / "ft.pth", TINY_VIT)
    own = model.state_dict()
    assert set(own) == set(state) - {"head.weight", "head.bias"}
    assert all(torch.equal(own[k], state[k]) for k in own)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    torch.testing.assert_close(model.pos_embed, sinusoid_table(TINY_VIT.num_patches, TINY_VIT.embed_dim))

    del state["blocks.1.attn.v_bias"]
    torch.save({"module": state}, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="1 missing"):
        load_trepa(tmp_path / "broken.pth", TINY_VIT)
    with pytest.raises(CheckpointError, match="not found"):
        load_trepa(tmp_path / "absent.pth", TINY_VIT)
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a torch file"):
        load_trepa(tmp_path / "garbage.pth", TINY_VIT)
    legacy = tmp_path / "legacy.pth"
    torch.save({"model": _official_videomae_state(TINY_VIT, 1)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_trepa(legacy, TINY_VIT).fc_norm.weight, model.fc_norm.weight)


def test_vit_g_dims_match_the_official_model() -> None:
    with torch.device("meta"):
        model = VideoMAEv2Features()
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes["patch_embed.proj.weight"] == [1408, 3, 2, 14, 14]
    assert shapes["blocks.39.mlp.fc1.weight"] == [6144, 1408]
    assert shapes["blocks.0.attn.qkv.weight"] == [4224, 1408] and "blocks.0.attn.qkv.bias" not in shapes
    assert "blocks.40.norm1.weight" not in shapes and ViTDims().num_patches == 2048
    table = sinusoid_table(5, 8)
    assert table[0, 3, 2].item() == pytest.approx(math.sin(3 / 10000 ** (2 / 8)))
    assert table[0, 3, 3].item() == pytest.approx(math.cos(3 / 10000 ** (2 / 8)))


def test_trepa_loss(tiny_trepa: VideoMAEv2Features) -> None:
    target = _images(32, 3, (32, 32)).view(2, 16, 3, 32, 32)
    assert trepa_loss(tiny_trepa, target, target).item() == 0
    pred = (target + 0.3 * torch.randn_like(target)).requires_grad_(True)
    loss = trepa_loss(tiny_trepa, pred, target)
    assert loss.item() > 0
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------- noise, weights


def test_mixed_noise_statistics() -> None:
    noise = mixed_noise((64, 4, 16, 8, 8), alpha=1.0, generator=torch.Generator().manual_seed(0))
    assert noise.std().item() == pytest.approx(1.0, abs=0.02)
    a, b = noise[:, :, 3].flatten(), noise[:, :, 11].flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1].item() == pytest.approx(0.5, abs=0.03)
    same = mixed_noise((2, 4, 16, 8, 8), alpha=None)
    assert torch.equal(same[:, :, 0], same[:, :, 15])


def test_one_step_x0_inverts_add_noise() -> None:
    scheduler = make_scheduler()
    x0, eps = torch.randn(3, 4, 2, 4, 4), torch.randn(3, 4, 2, 4, 4)
    t = torch.tensor([0, 500, 999])
    estimate = one_step_x0(scheduler.alphas_cumprod, eps, t, scheduler.add_noise(x0, eps, t))
    torch.testing.assert_close(estimate, x0, atol=1e-4, rtol=1e-4)


def test_loss_weights_from_run_config() -> None:
    assert LossWeights.from_run_config(load_unet_yaml("stage1")["run"]) == LossWeights(1.0, 0.0, 0.0, 0.0)
    assert LossWeights.from_run_config(load_unet_yaml("stage2")["run"]) == LossWeights()
    efficient = {"pixel_space_supervise": True, "use_syncnet": True, "trepa_loss_weight": 0}
    assert LossWeights.from_run_config(efficient) == LossWeights(trepa=0)
    with pytest.raises(ConfigError):
        LossWeights(sync=-1)


# ---------------------------------------------------------------------------------------------------- trainable params


def _count(params) -> int:
    return sum(p.numel() for p in params)


@pytest.mark.parametrize("preset", ["stage2_512", "stage2_efficient"])
def test_trainable_parameter_rules(preset: str, reference_dir: Path) -> None:
    with torch.device("meta"):
        unet = UNet3DConditionModel.from_config_file(preset)
    layout = json.loads((reference_dir / f"unet-{preset}.layout.json").read_text())["params"]

    def expected(*patterns: str) -> int:
        return sum(math.prod(shape) for name, shape in layout.items() if any(p in name for p in patterns))

    assert _count(trainable_parameters(unet, "stage1")) == layout_total(layout) == _count(unet.parameters())
    stage2 = _count(trainable_parameters(unet, "stage2"))
    assert stage2 == expected("motion_modules.", "attentions.")
    assert _count(p for p in unet.parameters() if p.requires_grad) == stage2
    efficient = _count(trainable_parameters(unet, "stage2_efficient"))
    assert efficient == expected("motion_modules.", "attn2.")
    rule = training_rule(load_unet_yaml(preset))
    assert _count(trainable_parameters(unet, rule)) == (stage2 if preset == "stage2_512" else efficient)
    if preset == "stage2_512":  # the reference README's figures
        assert expected("motion_modules.") == 417_137_600 and expected("attentions.") == 257_654_720
        assert stage2 == 417_137_600 + 257_654_720 and expected("attn2.") == 34_377_920
    assert training_rule(load_unet_yaml("stage1")) == "stage1"
    with pytest.raises(ConfigError):
        trainable_parameters(unet, ["no_such_module."])


def layout_total(layout: dict) -> int:
    return sum(math.prod(shape) for shape in layout.values())


# ---------------------------------------------------------------------------------------------------- the step


def _tiny_unet(seed: int) -> UNet3DConditionModel:
    """The tiny test U-Net with its zero-initialised convs filled in, as after stage-1 training (otherwise the zero
    output conv would hide every other layer's gradient)."""
    torch.manual_seed(seed)
    unet = UNet3DConditionModel.from_config_file(TESTS / "configs" / "unet_tiny.yaml")
    for name, param in unet.named_parameters():
        if name.startswith(("conv_in.", "conv_out.")) or "proj_out" in name:
            torch.nn.init.normal_(param, std=0.02)
    return unet.train()


def _batch(seed: int, frames: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "frames": _images(frames, seed, (RES, RES)).unsqueeze(0),
        "ref_frames": _images(frames, seed + 1, (RES, RES)).unsqueeze(0),
        "audio": torch.randn(1, frames, 50, 384, generator=g),
        "mel": torch.randn(1, 1, 80, 52, generator=g),
    }


@pytest.fixture
def one_thread():
    """These small ops gain little from a second thread, and on a shared 2-core machine the busy-waiting of two
    threads under load made the overfit test 10x slower (65 s vs 7 s); one thread keeps it near 10 s either way."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_stage1_step_overfits_a_fixed_batch() -> None:
    unet = UNet3DConditionModel.from_config_file(TESTS / "configs" / "unet_tiny.yaml").train()
    generator = torch.Generator()
    step = UNetTrainStep(
        unet, init_vae(TESTS / "configs" / "vae_tiny", seed=0), load_mask(RES), make_scheduler(),
        LossWeights(sync=0, lpips=0, trepa=0), generator=generator,
    )
    optimizer = torch.optim.AdamW(trainable_parameters(unet, "stage1"), lr=2e-3)
    batch, losses = _batch(0, frames=8), []  # 8 frames: the motion modules take any count up to 24, and it is faster
    for _ in range(20):
        generator.manual_seed(0)  # the same noise, timestep and latent samples every step: a fixed batch
        loss, metrics = step(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(metrics["mse"])
    print(f"stage-1 overfit: mse {losses[0]:.4f} -> {losses[-1]:.4f}")
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.usefixtures("one_thread")
def test_stage2_step_with_pixel_losses(vgg_file: Path, lpips_model, tiny_trepa: VideoMAEv2Features) -> None:
    unet = _tiny_unet(0)
    trainable = {id(p) for p in trainable_parameters(unet, "stage2")}
    vae = init_vae(TESTS / "configs" / "vae_tiny", seed=0)
    syncnet = StableSyncNet(load_syncnet_yaml("small")).eval().requires_grad_(False)
    step = UNetTrainStep(
        unet, vae, load_mask(RES), make_scheduler(), LossWeights(), syncnet=syncnet, lpips=lpips_model,
        trepa=tiny_trepa, pixel_space=True, syncnet_resolution=128, generator=torch.Generator().manual_seed(0),
    )
    started = time.perf_counter()
    loss, metrics = step(_batch(1))
    loss.backward()
    elapsed = time.perf_counter() - started
    print(f"tiny stage-2 step (forward + backward): {elapsed:.2f} s, metrics {metrics}")
    assert set(metrics) == {"mse", "sync", "lpips", "trepa", "total"}
    assert all(math.isfinite(v) and v > 0 for v in metrics.values())
    expected_total = metrics["mse"] + 0.05 * metrics["sync"] + 0.1 * metrics["lpips"] + 10 * metrics["trepa"]
    assert metrics["total"] == pytest.approx(expected_total, rel=1e-5)
    for name, param in unet.named_parameters():
        assert (param.grad is not None) == (id(param) in trainable), name
    assert all(torch.isfinite(p.grad).all() for p in unet.parameters() if p.grad is not None)
    assert any(p.grad.abs().sum() > 0 for n, p in unet.named_parameters() if "attentions." in n and p.grad is not None)
    for frozen in (vae, syncnet, lpips_model, tiny_trepa):
        assert all(p.grad is None for p in frozen.parameters())


def test_missing_loss_model_is_a_config_error(lpips_model) -> None:
    unet, vae = _tiny_unet(0), init_vae(TESTS / "configs" / "vae_tiny", seed=0)
    args = (unet, vae, load_mask(RES), make_scheduler())
    message = r"^sync loss weight 0.05 needs a SyncNet \(set ckpt.syncnet_path\) or set its weight to 0$"
    with pytest.raises(ConfigError, match=message):
        UNetTrainStep(*args, LossWeights(), lpips=lpips_model, pixel_space=True)
    with pytest.raises(ConfigError, match="trepa loss weight 10 needs"):
        UNetTrainStep(*args, LossWeights(sync=0), lpips=lpips_model, pixel_space=True)
    with pytest.raises(ConfigError, match="needs pixel-space supervision"):
        UNetTrainStep(*args, LossWeights(sync=0, trepa=0), lpips=lpips_model, pixel_space=False)
