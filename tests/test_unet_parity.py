"""Numerical parity with upstream's U-Net on the `unet-small` reference, and the guidance code the pipeline uses.

The reference output was computed by upstream's modules (fp32, CPU). Any bug-like change moved it by >= 0.05,
so the 1e-4 tolerance separates rounding from mistakes by two orders of magnitude.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentsync.models.unet import UNet3DConditionModel, UNetConfig
from latentsync.models.unet.motion import sinusoidal_table
from latentsync.pipeline.guidance import predict_noise

TOL = 1e-4


@pytest.fixture(scope="module")
def small(reference_dir: Path) -> tuple[UNet3DConditionModel, dict[str, torch.Tensor]]:
    cfg = UNetConfig.from_dict(json.loads((reference_dir / "unet-small.config.json").read_text())["model"])
    model = UNet3DConditionModel(cfg)
    model.load_state_dict(load_file(reference_dir / "unet-small.weights.safetensors"), strict=True)
    return model.eval(), load_file(reference_dir / "unet-small.io.safetensors")


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


@torch.no_grad()
def test_forward_matches_upstream(small) -> None:
    model, io = small
    out = model(io["sample"], io["timestep"], encoder_hidden_states=io["encoder_hidden_states"])
    assert out.shape == io["output"].shape and out.dtype == torch.float32
    err = _max_err(out, io["output"])
    assert err <= TOL, f"max |out - ref| = {err:.3g} > {TOL}"
    print(f"unet-small max |out - ref| = {err:.3g}")


@torch.no_grad()
def test_flat_audio_layout_gives_same_output(small) -> None:
    model, io = small
    audio = io["encoder_hidden_states"]
    nested = model(io["sample"], io["timestep"], audio)
    flat = model(io["sample"], io["timestep"], audio.flatten(0, 1))
    err = _max_err(flat, nested)
    assert err <= 1e-6, f"[(B*F), 50, D] vs [B, F, 50, D]: max diff {err:.3g}"


@torch.no_grad()
def test_scalar_timestep_broadcasts(small) -> None:
    model, io = small
    sample, audio = io["sample"], io["encoder_hidden_states"]
    shared = model(sample, torch.tensor(451), audio)
    per_sample = model(sample, torch.tensor([451, 451]), audio)
    assert _max_err(shared, per_sample) <= 1e-6


@torch.no_grad()
def test_guidance_one_is_the_conditional_prediction(small) -> None:
    model, io = small
    eps = predict_noise(
        model, io["noisy_latents"], io["mask"], io["masked_latents"], io["ref_latents"],
        io["timestep"], io["encoder_hidden_states"], guidance_scale=1.0,
    )  # fmt: skip
    err = _max_err(eps, io["output"])
    assert err <= TOL, f"guidance 1.0: max |eps - ref| = {err:.3g} > {TOL}"


@torch.no_grad()
def test_guidance_batches_zero_audio_as_unconditional(small) -> None:
    model, io = small
    audio, t, g = io["encoder_hidden_states"], io["timestep"], 1.5
    uncond = model(io["sample"], t, torch.zeros_like(audio))
    cond = model(io["sample"], t, audio)
    expected = uncond + g * (cond - uncond)
    eps = predict_noise(
        model, io["noisy_latents"], io["mask"], io["masked_latents"], io["ref_latents"], t, audio, guidance_scale=g
    )
    err = _max_err(eps, expected)
    assert err <= TOL, f"guidance 1.5 batched vs two calls: max diff {err:.3g} > {TOL}"
    assert _max_err(cond, io["output"]) <= TOL
    # A mask shared over batch and frames (as the pipeline has it) broadcasts to the same input.
    shared = predict_noise(
        model, io["noisy_latents"], io["mask"][:1, :, :1], io["masked_latents"], io["ref_latents"], t, audio, g
    )
    assert _max_err(shared, eps) <= 1e-6
    print(f"guidance 1.5 max |batched - separate| = {err:.3g}")


def test_position_tables_match_stored_buffers(small, reference_dir: Path) -> None:
    stored = load_file(reference_dir / "unet-small.weights.safetensors")
    tables = {k: v for k, v in stored.items() if k.endswith("pos_encoder.pe")}
    model, _ = small
    assert sorted(tables) == sorted(k for k, _ in model.named_buffers())
    for key, value in tables.items():
        assert _max_err(sinusoidal_table(value.shape[1], value.shape[2]), value) <= 1e-6, key


def test_gradient_checkpointing_gives_same_gradients(small) -> None:
    model, io = small
    sample, t, audio = io["sample"][:1, :, :4], io["timestep"][:1], io["encoder_hidden_states"][:1, :4]
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        model.enable_gradient_checkpointing(checkpointing)
        model.train()
        try:
            model(sample, t, audio).square().mean().backward()
        finally:
            model.enable_gradient_checkpointing(False)
            model.eval()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    model.zero_grad(set_to_none=True)
    worst = max(_max_err(grads[0][k], grads[1][k]) for k in grads[0])
    assert worst <= 1e-6, f"checkpointed gradients differ by {worst:.3g}"
