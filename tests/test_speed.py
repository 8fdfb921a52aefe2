"""The speed settings of inference: DeepCache feature reuse, the DPM-Solver++ sampler, batched chunks,
channels-last, and their wiring through `RunOptions`. Speed itself is measured by bench/speed.py, not here."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from media.clips import write_clip
from media.faces import astronaut_frames
from media.recording import record_written_frames
from media.speech import speech, write_audio

from latentsync.errors import ConfigError
from latentsync.models.scheduler import make_scheduler, scheduler_config
from latentsync.models.unet import FeatureCache, UNet3DConditionModel
from latentsync.pipeline.lipsync import LipSyncPipeline, RunOptions

CONFIGS = Path(__file__).parent / "configs"


def randomise(unet: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A fresh U-Net's zero input/output convs make it predict 0 whatever its input: give every weight a value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return unet.eval()


@pytest.fixture(scope="module")
def unet() -> UNet3DConditionModel:
    return randomise(UNet3DConditionModel.from_config_file(CONFIGS / "unet_tiny.yaml"))


@contextmanager
def calls(modules: list[torch.nn.Module]) -> Iterator[list[int]]:
    """A live counter of forward calls into any of `modules`, while the block runs."""
    count = [0]
    hooks = [m.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1)) for m in modules]
    try:
        yield count
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_cached_step_skips_the_deep_levels_and_matches_a_full_step(unet, depth):
    gen = torch.Generator().manual_seed(depth)
    x = torch.randn(2, 13, 4, 16, 16, generator=gen)
    audio = torch.randn(2, 4, 50, unet.config.cross_attention_dim, generator=gen)
    levels = len(unet.down_blocks)
    with torch.no_grad():
        full = unet(x, 500, audio)
        cache = FeatureCache(depth=depth)
        with calls([unet.mid_block, *unet.down_blocks[depth:], *unet.up_blocks[: levels - depth]]) as deep:
            assert torch.equal(unet(x, 500, audio, cache=cache), full)  # a refresh step is a plain step
            assert deep[0] == 1 + (levels - depth) + (levels - depth) and cache.features is not None
            deep[0] = 0
            cache.refresh = False
            reused = unet(x, 500, audio, cache=cache)
            assert deep[0] == 0  # nothing below the branch ran
        # Same input, so the reused deep features are exactly the ones a full step would compute.
        assert torch.equal(reused, full)
        later = unet(x, 300, audio, cache=cache)
        assert not torch.equal(later, unet(x, 300, audio))  # the stale features are used, not recomputed


def test_cache_depth_must_fit_the_unet(unet):
    x = torch.zeros(1, 13, 2, 16, 16)
    with pytest.raises(ValueError, match="cache depth must be 1..4"):
        unet(x, 1, None, cache=FeatureCache(depth=5))


def sd_alphas_cumprod() -> torch.Tensor:
    """The trained schedule written out from its definition (scaled-linear betas 0.00085..0.012 over 1000)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


@pytest.mark.parametrize("sampler, steps, tol", [("ddim", 20, 0.05), ("ddim", 8, 0.05), ("dpm++", 8, 1e-3),
                                                 ("dpm++", 4, 1e-3), ("ddim-trailing", 1, 0.05),
                                                 ("ddim-trailing", 2, 0.05)])
def test_samplers_reach_the_clean_sample_with_an_exact_noise_predictor(sampler, steps, tol):
    """With eps predicted exactly for a known x0, sampling must end at x0. DDIM's last step stops at t = 0
    (alpha 0.99915, upstream's set_alpha_to_one false), hence its looser tolerance; DPM-Solver++ ends at sigma 0.
    The oracle uses the schedule from its definition, so a wrongly configured schedule fails too."""
    alphas = sd_alphas_cumprod()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 64, generator=gen, dtype=torch.float64).clamp(-2, 2)
    scheduler = make_scheduler(sampler)
    results = []
    for _ in range(2):  # a second trajectory after set_timesteps must not see the first one's solver state
        scheduler.set_timesteps(steps)
        x = torch.randn(4, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        for t in scheduler.timesteps:
            a = alphas[int(t)]
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            x = scheduler.step(eps, t, x).prev_sample
        results.append(x)
    assert (results[0] - x0).abs().mean() < tol
    assert torch.equal(results[0], results[1])
    assert scheduler_config()["beta_start"] == 0.00085


def test_unknown_sampler_and_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="--sampler"):
        make_scheduler("euler")
    for bad in ({"sampler": "euler"}, {"cache_interval": 0}, {"cache_depth": 0}, {"batch": 0}):
        with pytest.raises(ConfigError, match="--"):
            RunOptions(**bad)


@pytest.fixture(scope="module")
def pipeline(tiny_model) -> LipSyncPipeline:
    pipe = LipSyncPipeline.from_model(tiny_model, "cpu", "fp32")
    randomise(pipe.models.unet)
    return pipe


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    wav = speech("One two three four five six.", rate=16000)[: 16000 * 2]  # 2 s: 50 frames, 4 chunks
    return {
        "video": write_clip(d / "face.mp4", astronaut_frames(50, size=(320, 240), fps=25), fps=25),
        "audio": write_audio(d / "speech.wav", wav, 16000),
    }


def run_frames(pipeline: LipSyncPipeline, media: dict[str, Path], out: Path, monkeypatch, **options) -> np.ndarray:
    """The frames a run hands to the encoder (the file itself is lossy)."""
    frames = record_written_frames(monkeypatch)
    report = pipeline.run(media["video"], media["audio"], out, RunOptions(steps=4, **options))
    assert report.frames == len(frames) == 50 and out.is_file()
    return np.stack(frames).astype(np.int16)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Whole-run PSNR in dB: frame-exact comparisons break on float summation order, which varies by machine."""
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


@pytest.fixture(scope="module")
def baseline(pipeline, media, tmp_path_factory) -> np.ndarray:
    with pytest.MonkeyPatch.context() as mp:
        return run_frames(pipeline, media, tmp_path_factory.mktemp("base") / "out.mp4", mp)


def test_batched_chunks_give_the_one_by_one_result(pipeline, media, baseline, tmp_path, monkeypatch):
    with calls([pipeline.models.unet]) as unet_calls:
        batched = run_frames(pipeline, media, tmp_path / "out.mp4", monkeypatch, batch=3)
    assert unet_calls[0] == 2 * 4  # 4 chunks in batches of 3 + 1, 4 steps each
    assert psnr(batched, baseline) >= 60  # float summation order only (measured 104 dB; another seed: 24 dB)


def test_deepcache_recomputes_the_deep_levels_every_nth_step(pipeline, media, baseline, tmp_path, monkeypatch):
    unet = pipeline.models.unet
    with calls([unet.mid_block]) as mid, calls([unet.conv_in]) as outer:
        cached = run_frames(pipeline, media, tmp_path / "out.mp4", monkeypatch, cache_interval=2)
    assert (outer[0], mid[0]) == (4 * 4, 4 * 2)  # steps 0 and 2 of 4 refresh, in each of the 4 chunks
    diff = np.abs(cached - baseline)
    assert 0 < diff.mean() < 2  # an approximation of the full run, not another image


def test_dpm_solver_and_channels_last_runs(pipeline, media, baseline, tmp_path, monkeypatch):
    dpm = run_frames(pipeline, media, tmp_path / "dpm.mp4", monkeypatch, sampler="dpm++")
    assert np.abs(dpm - baseline).max() > 0
    pipeline.models.unet.to(memory_format=torch.channels_last)
    pipeline.models.vae.to(memory_format=torch.channels_last)
    try:
        laid_out = run_frames(pipeline, media, tmp_path / "cl.mp4", monkeypatch)
    finally:
        pipeline.models.unet.to(memory_format=torch.contiguous_format)
        pipeline.models.vae.to(memory_format=torch.contiguous_format)
    assert psnr(laid_out, baseline) >= 60  # the same arithmetic in another memory layout


def test_identical_crops_are_encoded_once_per_run(pipeline, media, tmp_path):
    """A still image is fitted once, so every frame has the same crop and the VAE encodes it once, not twice per
    frame; a moving face is encoded frame by frame."""
    import cv2

    still = tmp_path / "still.png"
    first = next(iter(astronaut_frames(1, size=(320, 240), fps=25)))
    cv2.imwrite(str(still), cv2.cvtColor(first, cv2.COLOR_RGB2BGR))
    encoded = []
    hook = pipeline.models.vae.encoder.register_forward_hook(lambda _m, args, _o: encoded.append(args[0].shape[0]))
    try:
        report = pipeline.run(still, media["audio"], tmp_path / "still.mp4", RunOptions(steps=1))
        still_frames, encoded[:] = sum(encoded), []
        pipeline.run(media["video"], media["audio"], tmp_path / "moving.mp4", RunOptions(steps=1))
    finally:
        hook.remove()
    assert report.frames == 50
    assert still_frames == 2  # one crop, masked and not
    assert sum(encoded) == 2 * 50  # every moving frame, and the last short chunk's padding for free


def test_a_models_own_sampler_is_used_and_a_bad_one_refused(pipeline, media, tmp_path, monkeypatch):
    """`inference.sampler` in model.yaml is the run's default (a distilled student's ddim-trailing); --sampler
    overrides it; a name that is not a sampler is a one-line error and no output."""
    spec = pipeline.models.spec
    monkeypatch.setattr(spec, "inference", {**spec.inference, "sampler": "ddim-trailing", "steps": 1})
    report = pipeline.run(media["video"], media["audio"], tmp_path / "own.mp4", RunOptions())
    assert report.sampling.startswith("ddim-trailing, 1 steps")
    report = pipeline.run(media["video"], media["audio"], tmp_path / "ddim.mp4", RunOptions(sampler="ddim"))
    assert report.sampling.startswith("ddim, 1 steps")
    monkeypatch.setattr(spec, "inference", {**spec.inference, "sampler": "euler"})
    with pytest.raises(ConfigError, match="inference.sampler must be one of"):
        pipeline.run(media["video"], media["audio"], tmp_path / "bad.mp4", RunOptions())
    assert not (tmp_path / "bad.mp4").exists()


def test_the_gpu_bench_runs_dry_on_a_cpu(tmp_path):
    """`bench/gpu.sh --dry` (tiny shapes, CPU) exercises the GPU bench end to end, so the one GPU call a task may
    get is not spent on a broken script: a teacher row, then the 4-, 2- and 1-step students (timings are the
    bench's business, not this test's)."""
    import subprocess
    import sys

    bench = Path(__file__).resolve().parents[1] / "bench" / "gpu_unet.py"
    out = tmp_path / "gpu.md"
    subprocess.run([sys.executable, str(bench), "--dry", "--out", str(out)], check=True, capture_output=True)
    rows = [line.split("|") for line in out.read_text().splitlines() if line.startswith("| `")]
    assert [r[4].strip() for r in rows] == ["2 steps, guidance", "student, 4 steps", "student, 2 steps",
                                            "student, 1 step"]
    assert all(float(r[5]) > 0 for r in rows) and rows[0][7].strip() == "1.0x"
