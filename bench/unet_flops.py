"""FLOPs of one frame of inference, counted on the meta device (no weights, no compute), per U-Net level.

    .venv/bin/python bench/unet_flops.py [--preset stage2_512] [--vae sd-vae-ft-mse]

Counts one guided U-Net call on 2 x 16 frames (classifier-free guidance doubles the batch) by module with
`torch.utils.flop_counter`, splits it by resolution level, and derives per output frame: the U-Net FLOPs of each
sampler/DeepCache setting, the VAE's (2 encodes + 1 decode), and the compute-bound frame rate on a GPU of a given
dense bf16/fp16 throughput (989 TFLOP/s: H100 SXM). A measured speed can only be below that ceiling; this tells
how far a setting can go before kernels matter. The distilled students (`latentsync train distill`) take 1-4
unguided calls on 16 frames, half a guided call each; their ratio to upstream's 20 guided steps is the U-Net
work they save on any hardware.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from latentsync.models.unet import UNet3DConditionModel, load_unet_yaml
from latentsync.models.vae import init_vae

FRAMES = 16


def level_flops(preset: str) -> tuple[list[float], float, int]:
    """(FLOPs per level from the outside in, the rest (mid block, time embedding), resolution) of one call."""
    yaml = load_unet_yaml(preset)
    resolution = int(yaml.get("data", {}).get("resolution", 256))
    with torch.device("meta"):
        unet = UNet3DConditionModel.from_config_file(preset).eval()
        size = resolution // 8
        sample = torch.zeros(2, 13, FRAMES, size, size)
        audio = torch.zeros(2, FRAMES, 50, unet.config.cross_attention_dim)
    counter = FlopCounterMode(display=False, depth=None)
    with counter, torch.no_grad():
        unet(sample, 500, audio)
    flops = counter.get_flop_counts()
    per = {name: sum(ops.values()) for name, ops in flops.items()}
    total = per["Global"]
    levels = len(unet.down_blocks)
    out = []
    for i in range(levels):
        down = per.get(f"UNet3DConditionModel.down_blocks.{i}", 0)
        up = per.get(f"UNet3DConditionModel.up_blocks.{levels - 1 - i}", 0)
        out.append(float(down + up))
    outer = per.get("UNet3DConditionModel.conv_in", 0) + per.get("UNet3DConditionModel.conv_out", 0)
    out[0] += outer
    return out, float(total - sum(out)), resolution


def vae_flops(preset: str, resolution: int) -> float:
    with torch.device("meta"):
        vae = init_vae(preset).eval()
        pixels = torch.zeros(FRAMES, 3, resolution, resolution)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mean
        vae.encode(pixels)
        vae.decode(latents)
    return counter.get_total_flops() / FRAMES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="stage2_512", help="U-Net preset (stage2_512: 1.6, stage2: 1.5)")
    parser.add_argument("--vae", default="sd-vae-ft-mse")
    parser.add_argument("--tflops", type=float, default=989.0, help="dense fp16/bf16 TFLOP/s (default: H100 SXM)")
    args = parser.parse_args()
    levels, rest, resolution = level_flops(args.preset)
    call = sum(levels) + rest
    vae = vae_flops(args.vae, resolution)
    print(f"`{args.preset}` at {resolution} px: one guided U-Net call on 2 x {FRAMES} frames = {call / 1e12:.2f} TFLOP; "
          f"VAE {vae / 1e12:.3f} TFLOP per frame (2 encodes + decode)\n")
    print("| level (outside in) | share of a U-Net call |\n|---|---:|")
    for i, f in enumerate(levels):
        print(f"| {i} | {100 * f / call:.1f}% |")
    print(f"| mid block + rest | {100 * rest / call:.1f}% |\n")
    print(f"| setting | U-Net TFLOP/frame | vs 20 steps | + VAE | compute-bound frames/s at {args.tflops:g} TFLOP/s |"
          "\n|---|---:|---:|---:|---:|")
    default = 20 * call / FRAMES
    for steps, interval, depth in ((20, 1, 1), (20, 2, 1), (20, 3, 1), (20, 3, 2), (10, 1, 1), (8, 1, 1), (8, 2, 1),
                                   (6, 1, 1)):
        full = -(-steps // interval)
        partial = sum(levels[:depth])
        unet = (full * call + (steps - full) * partial) / FRAMES
        total = unet + vae
        name = f"{steps} steps" + (f", cache interval {interval} depth {depth}" if interval > 1 else "")
        print(f"| {name} | {unet / 1e12:.2f} | {unet / default:.3f} | {total / 1e12:.2f} | "
              f"{args.tflops * 1e12 / total:.1f} |")
    for steps in (4, 2, 1):  # a student: one unguided call (half the doubled batch) per step
        unet = steps * call / 2 / FRAMES
        total = unet + vae
        print(f"| student, {steps} step{'s' * (steps > 1)}, no guidance | {unet / 1e12:.2f} | {unet / default:.3f} "
              f"| {total / 1e12:.2f} | {args.tflops * 1e12 / total:.1f} |")


if __name__ == "__main__":
    main()
